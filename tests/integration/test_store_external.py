"""heimdall-store with --redis-url: nothing to run, READY at once, and it says whether that Redis answers."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.notify import NotifySocket
from tests.support.redis_servers import PASSWORD

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def test_store_watches_an_existing_redis_and_reports_it_in_status(redis_servers, tmp_path):
    server = redis_servers.start()
    (tmp_path / "key").write_text("k" * 32)
    os.chmod(tmp_path / "key", 0o600)
    (tmp_path / "heimdall.conf").write_text(
        f"redis-url = redis://:{PASSWORD}@127.0.0.1:{server.port}/0\ncluster-key-file = {tmp_path / 'key'}\n"
        f"data-dir = {tmp_path / 'data'}\nheartbeat-interval = 0.2\n")
    notify = NotifySocket(tmp_path / "notify")
    env = dict(os.environ, NOTIFY_SOCKET=str(notify.path))
    proc = subprocess.Popen([str(BIN / "heimdall-store"), "--config", str(tmp_path / "heimdall.conf")], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        seen = notify.messages_until(lambda m: any("external Redis reachable" in x for x in m))
        assert any("READY=1" in x for x in seen)
        redis_servers.stop()
        notify.messages_until(lambda m: any("external Redis unreachable" in x for x in m))
        assert proc.poll() is None  # an unreachable Redis is reported, not fatal
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
        notify.sock.close()
    assert proc.returncode == 0, err
    assert "the Redis at --redis-url is unreachable" in err
