"""Real redis-server processes for tests, on free loopback ports, always stopped afterwards."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis

from heimdall.redis_server import RedisServerConfig, redis_server_binary

PASSWORD = "test-password"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServers:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.processes: list[subprocess.Popen] = []

    def start(self, replica_of: RedisServerConfig | None = None) -> RedisServerConfig:
        port = free_port()
        config = RedisServerConfig(port=port, data_dir=self.root / f"redis-{port}", password=PASSWORD,
                                   persistence=False,
                                   replica_of=("127.0.0.1", replica_of.port) if replica_of else None)
        proc = subprocess.Popen([redis_server_binary(), str(config.write())], stdout=subprocess.DEVNULL)
        self.processes.append(proc)
        client = redis.Redis(port=port, password=PASSWORD)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                if replica_of is None or client.info("replication")["master_link_status"] == "up":
                    break
            except redis.ConnectionError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"redis-server on port {port} did not come up")
            time.sleep(0.02)
        client.close()
        return config

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
