"""The shared daemon runtime against a real notify socket and real signals.

A tiny daemon (tests/support/sample_daemon.py) runs as a child process with
NOTIFY_SOCKET pointing at a datagram socket we read, exactly as systemd would.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.notify import NotifySocket

SAMPLE = Path(__file__).resolve().parents[1] / "support" / "sample_daemon.py"


@pytest.fixture
def notify(tmp_path):
    ns = NotifySocket(tmp_path / "notify")
    yield ns
    ns.sock.close()


def start(notify, tmp_path, *args, watchdog_usec=None):
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path), PYTHONPATH=str(SAMPLE.parents[2]))
    env.pop("JOURNAL_STREAM", None)
    (tmp_path / "marker.conf").write_text("endpoint-port = 10100\n")
    if watchdog_usec:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return subprocess.Popen([sys.executable, str(SAMPLE), str(tmp_path / "marker"), *args], env=env,
                            stderr=subprocess.PIPE, text=True)


def test_ready_only_after_start_then_clean_stop_on_sigterm(notify, tmp_path):
    proc = start(notify, tmp_path, "--start-delay", "0.5")
    try:
        msgs = notify.messages_until(lambda m: any("READY=1" in x for x in m))
        # start() wrote the marker before READY: READY means serving.
        assert (tmp_path / "marker").read_text() == "started"
        assert msgs[0].startswith("STATUS=starting")
        proc.send_signal(signal.SIGTERM)
        notify.messages_until(lambda m: any("STOPPING=1" in x for x in m))
        assert proc.wait(5) == 0
        assert (tmp_path / "marker").read_text() == "stopped"  # shutdown() ran
    finally:
        proc.kill()
        proc.wait()


def test_watchdog_pings_only_while_the_loop_makes_progress(notify, tmp_path):
    proc = start(notify, tmp_path, "--stall-after", "1.0", watchdog_usec=200_000)  # ping every 0.1 s
    try:
        before = notify.messages_until(lambda m: any("STATUS=stalled" in x for x in m), timeout=30)
        assert any("READY=1" in x for x in before) and any("WATCHDOG=1" in x for x in before)
        # One ping may still be due for the progress made just before the stall; none after that.
        with pytest.raises(AssertionError):
            notify.messages_until(lambda m: sum("WATCHDOG=1" in x for x in m) >= 2, timeout=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


def reloaded(notify) -> None:
    """Wait for a reload to end: RELOADING=1, then READY=1 once it is done (or refused)."""
    notify.messages_until(lambda m: any("RELOADING=1" in x for x in m))
    notify.messages_until(lambda m: any("READY=1" in x for x in m))


def test_sighup_reloads_and_a_bad_reload_keeps_running(notify, tmp_path):
    proc = start(notify, tmp_path)
    try:
        notify.messages_until(lambda m: any("READY=1" in x for x in m))
        proc.send_signal(signal.SIGHUP)
        reloaded(notify)
        assert (tmp_path / "marker").read_text() == "reloaded"
        (tmp_path / "marker").write_text("running")
        (tmp_path / "marker.conf").write_text("endpoint-port = 0\n")
        proc.send_signal(signal.SIGHUP)
        reloaded(notify)
        assert proc.poll() is None  # still running on the old configuration
        assert (tmp_path / "marker").read_text() == "running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        err = proc.stderr.read()
        assert "reload refused" in err and "--endpoint-port" in err
    finally:
        proc.kill()
        proc.wait()


def test_sigterm_during_start_stops_cleanly(notify, tmp_path):
    proc = start(notify, tmp_path, "--start-delay", "30")
    try:
        notify.messages_until(lambda m: any("STATUS=starting" in x for x in m))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0
        assert (tmp_path / "marker").read_text() == "stopped"
    finally:
        proc.kill()
        proc.wait()


def test_a_failing_start_exits_1_with_the_error_logged(notify, tmp_path):
    proc = start(notify, tmp_path, "--fail-start")
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert "could not reach anything" in err
