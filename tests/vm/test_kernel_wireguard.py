"""Kernel WireGuard for real: KernelBackend inside a qemu guest booted with Debian's kernel.

The host kernel has no WireGuard, so guest.py boots one that has and runs
kernel_wireguard_scenario.py in it. A missing qemu, kernel or module fails
the test; nothing here skips.
"""
import re
from pathlib import Path

import pyroute2
import pytest

import guest  # tests/vm/guest.py

pytestmark = pytest.mark.vm


def test_kernel_backend_changes_peers_live_without_losing_a_packet():
    site = Path(pyroute2.__file__).resolve().parents[1]  # pyroute2 and cryptography, shared read-only
    result = guest.run("tests/vm/kernel_wireguard_scenario.py", site, timeout=100)
    figures = re.findall(r"^figure .*$", result.output, re.MULTILINE)
    print(f"guest exit {result.exit_code} after {result.seconds:.1f} s (boot included)", *figures, sep="\n")
    assert result.exit_code == 0, f"the guest scenario failed (exit {result.exit_code}); console:\n{result.output}"
    assert "scenario passed" in result.output, result.output
