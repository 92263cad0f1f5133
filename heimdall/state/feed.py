"""The node's latest state snapshot, renewed on every change event: what Watch streams follow.

One subscription per heimdall-api process however many peers watch: a change
event (or a burst of them) costs one snapshot of the local Redis, and every
watcher derives its own view from that shared snapshot. A watcher that falls
behind skips to the newest snapshot: a peer needs the current config, not each
step. In every idle second the revision is compared too (one GET): a full sync
of the replica (after its node joined, or from a new master) replaces its data
without any event, and an event can be lost. When the local Redis goes away the
last snapshot stays (reads keep being served from it) and the feed reconnects. A
short loss (a restart of heimdall-store) is a warning; one that lasts
UNREACHABLE_ERROR_AFTER seconds is an error (`journalctl -p err` shows it), and
the recovery is logged.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing

from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from heimdall.state import Event, Snapshot, State, keys

log = logging.getLogger(__name__)

TICK = 1.0  # seconds without an event after which the revision is compared (and progress reported)
RETRY = 1.0  # seconds between attempts to reach the local Redis
SUBSCRIBE_TIMEOUT = 5.0
UNREACHABLE_ERROR_AFTER = 10.0  # seconds without the local Redis (after having had it) before an error is logged


class SnapshotFeed:
    """The latest snapshot of ``state``'s reader (the local Redis), and a way to wait for newer ones."""

    def __init__(self, state: State, *, on_snapshot: Callable[[Snapshot], None] = lambda snapshot: None,
                 progress: Callable[[], None] = lambda: None) -> None:
        self._state = state
        self._on_snapshot = on_snapshot
        self._progress = progress
        self.latest: Snapshot | None = None
        self._live = False
        self._changed = asyncio.Event()
        self._closed = False
        self._lost_at: float | None = None  # when the local Redis went away (monotonic), while it is away
        self._lost_reported = False  # the error for this loss has been logged

    @property
    def live(self) -> bool:
        """Subscribed to the local Redis, so ``latest`` is current."""
        return self._live

    async def run(self) -> None:
        """Follow the local Redis until cancelled; after losing it, keep the last snapshot and reconnect."""
        while True:
            try:
                await self._follow()
            except (RedisError, OSError) as exc:
                if self._live:
                    log.warning("lost the local Redis (%s); serving the snapshot of revision %d until it is back",
                                exc, self.latest.rev)
                    self._lost_at, self._lost_reported = time.monotonic(), False
                elif self._lost_at is not None and not self._lost_reported \
                        and time.monotonic() - self._lost_at >= UNREACHABLE_ERROR_AFTER:
                    log.error("the local Redis has been unreachable for %.0f s (%s); still serving revision %d",
                              time.monotonic() - self._lost_at, exc, self.latest.rev)
                    self._lost_reported = True
                else:
                    log.debug("local Redis unavailable: %s", exc)
                self._live = False
            self._progress()
            await asyncio.sleep(RETRY)

    async def _follow(self) -> None:
        pubsub = self._state.reader.pubsub()
        try:
            await pubsub.subscribe(keys.EVENTS)
            # Snapshot only once the subscription is confirmed: then no change can fall in between.
            message = await pubsub.get_message(timeout=SUBSCRIBE_TIMEOUT)
            if message is None or message["type"] != "subscribe":
                raise RedisTimeoutError(f"no confirmation of the subscription to {keys.EVENTS}")
            await self._refresh()
            self._live = True
            if self._lost_at is not None:
                log.info("the local Redis is back after %.1f s; following revision %d",
                         time.monotonic() - self._lost_at, self.latest.rev)
                self._lost_at = None
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TICK)
                self._progress()
                stale = False
                while message is not None:  # take the whole burst, then one snapshot
                    event = Event.parse(message["data"])
                    # "!=", not ">": after a fail-over the new master's revision may be lower.
                    stale |= event is not None and event.rev != self.latest.rev
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0)
                if not stale:
                    stale = await self._state.revision() != self.latest.rev
                if stale:
                    await self._refresh()
        finally:
            await pubsub.aclose()

    async def _refresh(self) -> None:
        snapshot = await self._state.snapshot()
        self.latest = snapshot
        self._on_snapshot(snapshot)
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def updates(self) -> AsyncIterator[Snapshot]:
        """The latest snapshot now (once there is one), then every newer one; ends after :meth:`close`."""
        while not self._closed:
            changed = self._changed  # taken before yielding: a change during the caller's turn is not missed
            if self.latest is not None:
                yield self.latest
            await changed.wait()

    async def wait_for(self, predicate: Callable[[Snapshot], bool], timeout: float | None = None) -> Snapshot | None:
        """The first snapshot (the current one included) that satisfies ``predicate``; None on timeout or close."""
        try:
            async with asyncio.timeout(timeout), aclosing(self.updates()) as updates:
                async for snapshot in updates:
                    if predicate(snapshot):
                        return snapshot
        except TimeoutError:
            pass
        return None

    def close(self) -> None:
        """End every :meth:`updates` stream (watchers then hang up: the node is stopping)."""
        self._closed = True
        self._changed.set()
