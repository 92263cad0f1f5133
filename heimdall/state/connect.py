"""How a daemon reaches the state: read from the local Redis, write to the master.

The local Redis is the node's own (embedded, on 127.0.0.1) unless ``--redis-url``
names an existing one, in which case reads and writes both go there. Every node's
Redis uses the same password, derived from the cluster key.
"""
from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from heimdall import cluster
from heimdall.settings import Config
from heimdall.state.records import MasterRecord
from heimdall.state.store import State

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 5.0  # longer than a write's wait for its replicas (store.REPLICA_ACK_TIMEOUT_MS)
MASTER_CONNECT_TIMEOUT = 1.0  # the master is one tunnel hop away: a dead one is not waited for


class StateLink:
    """A daemon's State, re-pointed at the master whenever the master record changes."""

    def __init__(self, config: Config, cluster_key: bytes) -> None:
        self.config = config
        self.password = cluster.redis_password(cluster_key)
        self.local = self._client(url=config.redis_url or None, host="127.0.0.1")
        self.state = State(self.local)
        self.master_address: str | None = None
        self._closing: set[asyncio.Task] = set()

    def _client(self, *, url: str | None = None, host: str = "127.0.0.1") -> aioredis.Redis:
        options = dict(decode_responses=True, socket_timeout=SOCKET_TIMEOUT, socket_connect_timeout=SOCKET_TIMEOUT,
                       health_check_interval=10)
        if url:
            return external_redis(url, **options)
        if host != "127.0.0.1":  # another node's: a write to a master that died fails at once, no retries
            return probe_client(host, self.config.redis_port, self.password, MASTER_CONNECT_TIMEOUT,
                                socket_timeout=SOCKET_TIMEOUT, health_check_interval=10)
        return aioredis.Redis(host=host, port=self.config.redis_port, password=self.password, **options)

    def follow(self, master: MasterRecord | None, own_id: str) -> State:
        """Point writes at ``master`` (the local Redis when we are it, or when using --redis-url)."""
        address = None if master is None or master.node_id == own_id or self.config.redis_url else master.address
        if address != self.master_address:
            previous = self.state.writer
            self.state = self.state.with_writer(self._client(host=address) if address else self.local)
            self.master_address = address
            if previous is not self.local:
                # Closing is best effort (the old master may be gone); the task is kept until it ends.
                closing = asyncio.ensure_future(previous.aclose())
                self._closing.add(closing)
                closing.add_done_callback(self._closing.discard)
            log.info("writing to the master at %s", address or "the local Redis")
        return self.state

    async def close(self) -> None:
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self.state.writer is not self.local:
            await self.state.writer.aclose()
        await self.local.aclose()


def external_redis(url: str, **options) -> aioredis.Redis:
    """A client of the Redis at ``--redis-url``. Behind Sentinel (``sentinel://``), every new connection
    asks the sentinels where the master is now, so the owner's failover is followed by the next call."""
    if not url.startswith("sentinel://"):
        return aioredis.Redis.from_url(url, **options)
    from redis.asyncio.sentinel import Sentinel

    from heimdall.sentinel import SentinelUrl

    parsed = SentinelUrl.parse(url)
    sentinel_options = {k: v for k, v in options.items() if k in ("socket_timeout", "socket_connect_timeout")}
    sentinels = Sentinel(list(parsed.sentinels), sentinel_kwargs={**sentinel_options, "password": parsed.password})
    return sentinels.master_for(parsed.service, password=parsed.password, **options)


def probe_client(host: str, port: int, password: str, timeout: float, **options) -> aioredis.Redis:
    """A client that gives up after ``timeout`` and never retries on its own: an answer now, or an error now.

    (redis-py retries a failed connection three times with backoff by default: seconds lost on a
    sentinel not started yet or a master that died.)"""
    defaults = dict(decode_responses=True, socket_timeout=timeout, socket_connect_timeout=timeout,
                    retry=Retry(NoBackoff(), 0))
    return aioredis.Redis(host=host, port=port, password=password, **{**defaults, **options})
