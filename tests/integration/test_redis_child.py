"""RedisServerProcess never leaves a redis-server behind: the child dies with its parent, and a
leftover named by the pidfile is stopped before a start, but only if it runs from our config."""
import asyncio
import os
import select
import signal
import subprocess
import sys
import time

import pytest
import redis

from heimdall.redis_server import RedisServerConfig, RedisServerError, RedisServerProcess, redis_server_binary
from tests.support.redis_servers import PASSWORD, free_port

pytestmark = pytest.mark.integration


@pytest.fixture
def config(tmp_path):
    return RedisServerConfig(port=free_port(), data_dir=tmp_path / "redis", password=PASSWORD, persistence=False)


@pytest.fixture
def processes():
    """Popen objects to end at the end of the test, whatever happened."""
    started = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def run_leftover(config: RedisServerConfig, processes: list) -> subprocess.Popen:
    """A redis-server started from ``config`` as RedisServerProcess would, but by no one alive, once it answers."""
    proc = subprocess.Popen([redis_server_binary(), str(config.write()), "--set-proc-title", "no"],
                            stdout=subprocess.DEVNULL)
    processes.append(proc)
    client = redis.Redis(port=config.port, password=PASSWORD)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            assert time.monotonic() < deadline and proc.poll() is None, "the leftover redis-server did not start"
            time.sleep(0.02)
    client.close()
    return proc


async def start_and_stop(server: RedisServerProcess) -> int:
    """Start the server, check it answers as itself, stop it; its PID."""
    await server.start()
    try:
        async with server.client() as client:
            assert (await client.info("server"))["process_id"] == server.pid
        assert int(server.pidfile.read_text()) == server.pid
        return server.pid
    finally:
        await server.stop()


def test_a_leftover_of_our_config_is_stopped_first(config, processes, caplog):
    leftover = run_leftover(config, processes)
    config.data_dir.joinpath("redis.pid").write_text(f"{leftover.pid}\n")
    server = RedisServerProcess(config)
    pid = asyncio.run(start_and_stop(server))
    assert pid != leftover.pid and leftover.wait(5) == 0  # redis's clean exit on SIGTERM
    assert f"redis-server {leftover.pid} from a previous run" in caplog.text
    assert not server.pidfile.exists()


def test_a_pidfile_naming_anything_else_is_left_alone(config, processes, tmp_path):
    sleeper = subprocess.Popen(["sleep", "60"])
    other_config = RedisServerConfig(port=free_port(), data_dir=tmp_path / "other", password=PASSWORD,
                                     persistence=False)
    other = run_leftover(other_config, processes)
    processes.append(sleeper)
    for stranger in (sleeper, other):
        config.data_dir.mkdir(exist_ok=True)
        config.data_dir.joinpath("redis.pid").write_text(f"{stranger.pid}\n")
        asyncio.run(start_and_stop(RedisServerProcess(config)))
        assert stranger.poll() is None


def test_a_start_fails_while_another_server_holds_the_port(config, processes, tmp_path):
    other = run_leftover(RedisServerConfig(port=config.port, data_dir=tmp_path / "other", password=PASSWORD,
                                           persistence=False), processes)
    with pytest.raises(RedisServerError, match="exited"):  # not taken for our own, though it answers
        asyncio.run(RedisServerProcess(config).start())
    assert other.poll() is None


def test_the_child_dies_with_its_parent(config, processes):
    script = f"""
import asyncio, sys
from pathlib import Path
from heimdall.redis_server import RedisServerConfig, RedisServerProcess
async def main():
    server = RedisServerProcess(RedisServerConfig(port={config.port}, data_dir=Path("{config.data_dir}"),
                                                  password="{PASSWORD}", persistence=False))
    await server.start()
    print(server.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    processes.append(parent)
    child = os.pidfd_open(int(parent.stdout.readline()))
    try:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert select.select([child], [], [], 10)[0], "redis-server outlived its parent"
    finally:
        if not select.select([child], [], [], 0)[0]:
            signal.pidfd_send_signal(child, signal.SIGKILL)  # leave nothing behind when it fails
        os.close(child)
