"""--redis-url: heimdall-store has nothing to run, is READY at once and says whether that Redis answers;
a Redis behind its owner's Sentinel is followed through the owner's failover."""
import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from redis.exceptions import RedisError

from heimdall.redis_server import RedisServerProcess
from heimdall.sentinel import MASTER_NAME, SentinelConfig, sentinel_id
from heimdall.state import State, StateError
from heimdall.state.connect import external_redis
from tests.support.notify import NotifySocket
from tests.support.redis_servers import PASSWORD, free_port

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


def test_a_redis_behind_its_owners_sentinel_is_followed_through_a_failover(redis_servers, tmp_path):
    """--redis-url sentinel://...: writes reach whichever server the owner's Sentinel names master."""
    master = redis_servers.start()
    replica = redis_servers.start(replica_of=master)
    sentinel_port = free_port()
    config = SentinelConfig(port=sentinel_port, data_dir=tmp_path / "sentinel", password=PASSWORD,
                            announce_ip="127.0.0.1", myid=sentinel_id("owner"), master_ip="127.0.0.1",
                            redis_port=master.port, quorum=1, down_after_ms=1000)
    url = f"sentinel://:{PASSWORD}@127.0.0.1:{sentinel_port}/{MASTER_NAME}"

    async def scenario():
        owner = RedisServerProcess(config)
        await owner.start()
        try:
            async with external_redis(url, decode_responses=True, socket_timeout=5) as client:
                state = State(client)
                for _ in range(100):  # the replica counts (and the write waits for it) once its first sync is over
                    if (await client.info("replication")).get("slave0", {}).get("state") == "online":
                        break
                    await asyncio.sleep(0.1)
                await state.authorize_peer("before-failover")
                async with owner.client() as sentinel:
                    for _ in range(300):  # until the owner's sentinel knows the replica well enough to promote it
                        try:
                            await sentinel.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
                            break
                        except RedisError as exc:
                            assert "NOGOODSLAVE" in str(exc)
                            await asyncio.sleep(0.1)
                promoted = redis.Redis(port=replica.port, password=PASSWORD)
                demoted = redis.Redis(port=master.port, password=PASSWORD)
                for _ in range(300):  # the owner's Sentinel turns the old master into a replica too
                    if (promoted.info("replication")["role"], demoted.info("replication")["role"]) == ("master",
                                                                                                      "slave"):
                        break
                    await asyncio.sleep(0.1)
                assert promoted.info("replication")["role"] == "master"
                for _ in range(100):  # a connection to the old master is dropped at its READONLY answer: retried
                    try:
                        await state.authorize_peer("after-failover")
                        break
                    except (RedisError, StateError):
                        await asyncio.sleep(0.1)
                assert promoted.hexists("heimdall:authorized", "after-failover")
                assert promoted.hexists("heimdall:authorized", "before-failover")
        finally:
            await owner.stop()

    asyncio.run(scenario())

