"""Suite-wide rules: a skipped test is a failure here (CI is root and has everything)."""
import pytest


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"a skipped test counts as a failure in this suite: {report.longrepr}"
