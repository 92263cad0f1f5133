"""SnapshotFeed's log levels when the local Redis goes away: a short loss is a warning, a lasting
one an error (what `journalctl -p err` shows), and the recovery is logged."""
import asyncio
import logging

from redis.exceptions import ConnectionError as RedisConnectionError

from heimdall.state import feed as feed_module
from heimdall.state.feed import SnapshotFeed


class Snapshot:
    rev = 7


class FakeState:
    """A local Redis that is up while ``up`` is set: subscriptions confirm, then idle."""

    def __init__(self) -> None:
        self.up = True
        state = self

        class PubSub:
            async def subscribe(self, channel):
                if not state.up:
                    raise RedisConnectionError("Connection refused")

            async def get_message(self, ignore_subscribe_messages=False, timeout=0):
                if not state.up:
                    raise RedisConnectionError("Connection closed by server")
                if not ignore_subscribe_messages:
                    return {"type": "subscribe"}
                await asyncio.sleep(min(timeout, 0.01))
                return None

            async def aclose(self):
                pass

        self.reader = type("Reader", (), {"pubsub": lambda _self: PubSub()})()

    async def snapshot(self):
        return Snapshot()

    async def revision(self):
        return Snapshot.rev


def outage(monkeypatch, caplog, seconds: float) -> list[tuple[int, str]]:
    monkeypatch.setattr(feed_module, "RETRY", 0.01)
    monkeypatch.setattr(feed_module, "UNREACHABLE_ERROR_AFTER", 0.3)
    caplog.set_level(logging.DEBUG, logger="heimdall.state.feed")

    async def scenario():
        state = FakeState()
        feed = SnapshotFeed(state)
        task = asyncio.ensure_future(feed.run())
        await asyncio.sleep(0.1)
        assert feed.live
        state.up = False
        await asyncio.sleep(seconds)
        assert not feed.live
        state.up = True
        await asyncio.sleep(0.1)
        assert feed.live
        task.cancel()

    asyncio.run(scenario())
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.levelno > logging.DEBUG]


def test_a_short_loss_of_the_local_redis_is_a_warning(monkeypatch, caplog):
    records = outage(monkeypatch, caplog, 0.1)
    assert [level for level, _ in records] == [logging.WARNING, logging.INFO], records
    assert records[0][1].startswith("lost the local Redis")
    assert records[1][1].startswith("the local Redis is back after")


def test_a_lasting_loss_is_one_error_and_the_recovery_is_logged(monkeypatch, caplog):
    records = outage(monkeypatch, caplog, 0.6)
    assert [level for level, _ in records] == [logging.WARNING, logging.ERROR, logging.INFO], records
    assert records[1][1].startswith("the local Redis has been unreachable for 0 s")
    assert "still serving revision 7" in records[1][1]
