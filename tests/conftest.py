"""Suite-wide rules: a skipped test is a failure here (CI is root and has everything)."""
import shutil

import pytest

from tests.support.redis_servers import RedisServers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        report.longrepr = f"a skipped test counts as a failure in this suite: {report.longrepr}"


@pytest.fixture
def redis_servers(tmp_path):
    """Start real redis-server processes (``redis_servers.start(replica_of=...)``); stopped at the end."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (make deps installs it)")
    servers = RedisServers(tmp_path)
    yield servers
    servers.stop()
