"""The heimdall-api program as systemd runs it, and hctl against it, both as real processes."""
import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from heimdall.state import State
from tests.integration.test_api import CLUSTER_KEY, NODE_ID, api_config, make_member
from tests.support.redis_servers import PASSWORD, free_port
from tests.support.notify import NotifySocket

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEIMDALL_") and k != "JOURNAL_STREAM"}
    return env | extra


@pytest.fixture
def notify(tmp_path):
    sock = NotifySocket(tmp_path / "notify")
    yield sock
    sock.sock.close()


class Hctl:
    def __init__(self, tmp_path: Path, socket: Path, tcp: str) -> None:
        self.empty = tmp_path / "empty.conf"
        self.empty.write_text("")
        self.key_file = tmp_path / "cluster.key"
        self.key_file.write_text(CLUSTER_KEY + "\n")
        self.key_file.chmod(0o600)
        self.socket = socket
        self.tcp = tcp

    def __call__(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "hctl"), "--config", str(self.empty), *args], env=clean_env(),
                              capture_output=True, text=True, timeout=30)

    def json(self, *args: str):
        result = self(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


def test_heimdall_api_program_with_hctl_end_to_end(redis_servers, tmp_path, notify):
    redis_config = redis_servers.start()
    config = api_config(redis_config, tmp_path)
    hctl = Hctl(tmp_path, config.operator_socket, config.addr)
    argv = [str(BIN / "heimdall-api"), "--config", str(hctl.empty), "--id", NODE_ID, "--name", "gw1",
            "--data-dir", str(config.data_dir), "--cluster-key-file", str(hctl.key_file),
            "--redis-url", config.redis_url, "--addr", config.addr, "--operator-socket", str(config.operator_socket),
            "--node-network", str(config.node_network), "--peer-network", str(config.peer_network)]
    proc = subprocess.Popen(argv, env=clean_env(NOTIFY_SOCKET=str(notify.path)), stderr=subprocess.PIPE, text=True)
    try:
        # Not a member yet: no READY, no socket.
        with pytest.raises(AssertionError):
            notify.messages_until(lambda m: any("READY=1" in x for x in m), timeout=1.0)
        assert not config.operator_socket.exists()

        async def become_member():
            async with aioredis.Redis(port=redis_config.port, password=PASSWORD, decode_responses=True) as redis:
                await make_member(State(redis), config)
                await State(redis).heartbeat(NODE_ID)

        asyncio.run(become_member())
        notify.messages_until(lambda m: any("READY=1" in x for x in m), timeout=10)
        assert config.operator_socket.exists()

        # Over the operator socket (the default when it exists): no other credential needed.
        on_socket = ("--operator-socket", str(config.operator_socket))
        assert hctl.json(*on_socket, "peers", "authorize", "laptop-1") == {"peer_id": "laptop-1", "public_key": ""}
        assert hctl.json("-a", f"unix://{config.operator_socket}", "peers", "authorized") == [
            {"peer_id": "laptop-1", "public_key": ""}]

        # Over TCP: anonymous is refused, the cluster key file makes it an operator.
        anonymous = hctl("-a", config.addr, "--cluster-key-file", str(tmp_path / "none"), "peers", "list")
        assert anonymous.returncode == 1 and "UNAUTHENTICATED" in anonymous.stderr
        signed = ("-a", config.addr, "--cluster-key-file", str(hctl.key_file))
        added = hctl(*signed, "routes", "add", "10.200.0.0/24", "--via", NODE_ID)
        assert added.returncode == 0 and "10.200.0.0/24" in added.stdout
        created = hctl.json(*signed, "routes", "create", "--node-id", NODE_ID, "--network", "10.201.0.0/24")
        assert created == {"network": "10.201.0.0/24", "node_id": NODE_ID}
        assert hctl.json(*signed, "routes", "list") == [{"network": "10.200.0.0/24", "node_id": NODE_ID},
                                                         {"network": "10.201.0.0/24", "node_id": NODE_ID}]
        [node] = hctl.json(*signed, "nodes", "list")
        assert node["id"] == NODE_ID and isinstance(node["joined_at"], int) and node["last_seen"] > 0
        status = hctl.json(*on_socket, "status")
        assert status["master"]["node_id"] == NODE_ID and status["nodes"][0]["heartbeat_age"] < 60
        human = hctl(*on_socket, "status")
        assert human.returncode == 0 and "master" in human.stdout and "LAST HEARTBEAT" in human.stdout
        table = hctl(*on_socket, "routes", "list")
        assert table.stdout.splitlines()[0].split() == ["NETWORK", "NODE", "ID"]

        # Refusals and mistakes: 1 when the server says no or cannot be reached, 2 for usage.
        missing = hctl(*on_socket, "routes", "delete", "10.9.9.0/24")
        assert missing.returncode == 1 and "NOT_FOUND" in missing.stderr
        invalid = hctl(*on_socket, "peers", "authorize", "bad id!")
        assert invalid.returncode == 1 and "peer_id" in invalid.stderr
        assert hctl(*on_socket, "peers").returncode == 2
        assert hctl(*on_socket, "routes", "create", "--network", "10.202.0.0/24").returncode == 2
        unreachable = hctl("-a", f"tcp://127.0.0.1:{free_port()}", "status")
        assert unreachable.returncode == 1 and "UNAVAILABLE" in unreachable.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(15)
        finally:
            proc.kill()
        stderr = proc.stderr.read()
    assert code == 0, stderr
    assert not config.operator_socket.exists()
