"""Integration tier: simulated hosts in namespaces, real wireguard-go, redis-server, iptables.

Missing prerequisites fail the run loudly instead of skipping: CI is root and
has everything (`make test` installs it), so a skip would only hide a broken setup.
"""
import os
import shutil

import pytest

from heimdall.lab import Lab

TOOLS = ("ip", "nsenter", "unshare", "ping", "wireguard-go", "wg", "redis-server", "dig", "dnsmasq")


@pytest.fixture(scope="session", autouse=True)
def integration_prerequisites():
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root")
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if not os.path.exists("/dev/net/tun"):
        problems.append("no /dev/net/tun (wireguard-go needs it)")
    if problems:
        pytest.fail(f"integration tests cannot run: {'; '.join(problems)} (`make test` installs the tools)",
                    pytrace=False)


@pytest.fixture
def lab():
    """A fresh set of simulated hosts, removed after the test even when it fails."""
    with Lab() as lab:
        yield lab
