"""E2E tier: the systemd units on real systemd, in systemd-nspawn containers (see containers.py).

Missing prerequisites fail the run loudly instead of skipping: `make test`
installs everything, so a skip would only hide a broken setup. The image is
built once per session (cached across runs); how long that took, and the
figures tests record (timings, exposure scores), are printed at the end of the run.
"""
import time

import pytest

from tests.e2e import containers

FIGURES: dict[str, str] = {}


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A failed test's report ends with each container's heimdall journal: what the units said."""
    outcome = yield
    report = outcome.get_result()
    fleet = item.funcargs.get("fleet") if hasattr(item, "funcargs") else None
    if report.failed and fleet is not None:
        for box in fleet.containers.values():
            if box.leader is not None:
                journal = box.run("journalctl", "--no-pager", "--boot", "--lines=150", "--unit=heimdall*",
                                  check=False).stdout
                report.sections.append((f"journal of {box.name}", journal))


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.section("e2e figures")
        for what, value in FIGURES.items():
            terminalreporter.write_line(f"{what}: {value}")


def _image(tmp_path_factory, package: bool) -> containers.Image:
    problems = containers.missing_prerequisites()
    if problems:
        pytest.fail(f"e2e tests cannot run: {'; '.join(problems)} (`make test` installs the tools)", pytrace=False)
    log = tmp_path_factory.mktemp("e2e-image") / "build.log"
    started = time.monotonic()
    try:
        image = containers.build_image(log, package=package)
    except containers.ContainerError as exc:
        pytest.fail(f"cannot build the e2e image: {exc}", pytrace=False)
    what = "image" if package else "bare image"
    FIGURES[f"{what} (built)" if log.exists() else f"{what} (cached)"] = f"{time.monotonic() - started:.1f} s"
    return image


@pytest.fixture(scope="session")
def image(tmp_path_factory):
    """The container image for the working tree's sources; built or reused from .cache/e2e."""
    return _image(tmp_path_factory, package=True)


@pytest.fixture(scope="session")
def bare_image(tmp_path_factory):
    """The image without our package: for the Ansible role to install on (dependencies as wheels
    in containers.WHEELHOUSE)."""
    return _image(tmp_path_factory, package=False)


@pytest.fixture(scope="session")
def figures() -> dict[str, str]:
    """Figures worth reporting ({what: "value unit"}), printed at the end of the run."""
    return FIGURES


@pytest.fixture(scope="module")
def fleet(image, tmp_path_factory):
    """Containers for one test module, halted and removed afterwards even when a test fails."""
    with containers.Fleet(image, tmp_path_factory.mktemp("e2e-consoles")) as fleet:
        yield fleet
