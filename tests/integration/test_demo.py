"""`make demo` (the README's main command) runs the live network and cleans up after itself."""
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def test_demo_runs_the_live_network_without_loss_and_leaves_nothing_behind(tmp_path):
    result = subprocess.run([sys.executable, "-m", "heimdall.lab.demo", "--keep-logs", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 flows: 0 packets lost" in result.stdout
    assert "reaches gw1-gw3" in result.stdout and "cut off from every node" in result.stdout
    assert "elected master in" in result.stdout and "afterwards: hctl routes create" in result.stdout
    assert "ping gw3 -> answered" in result.stdout and "hctl nodes remove gw1 -> off every host" in result.stdout
    assert result.stdout.rstrip().endswith("OK")
    prefix = re.search(r"\(namespaces (hd\w+)-\*\)", result.stdout)[1]
    assert not [ns for ns in namespaces() if ns.startswith(prefix + "-")]
