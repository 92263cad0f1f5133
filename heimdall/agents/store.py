"""heimdall-store: the node's own redis-server, replicating the master over the tunnel.

It writes the Redis config itself (bind 127.0.0.1 and the tunnel address only,
a password derived from the cluster key, data under the data dir), runs
redis-server as a child and restarts it if it dies. It points the local Redis at
the master named by the membership file at first (the local Redis is empty
until it replicates), then by the replicated ``heimdall:master`` record.
With ``--redis-url`` there is nothing to run: the daemon only watches that Redis.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from heimdall import cluster, identity
from heimdall.daemon import Daemon
from heimdall.identity import Membership
from heimdall.redis_server import RedisServerConfig, RedisServerProcess, RedisServerError
from heimdall.state import State

POLL = 0.2  # membership file and bind checks while joining; not on any steady-state path
TICK = 1.0  # the settled main loop's wake-up: progress for the watchdog, nothing more
RESTART_BACKOFF_MAX = 10.0


class StoreAgent(Daemon):
    program = "heimdall-store"

    def __init__(self, config, config_loader=None) -> None:
        super().__init__(config, config_loader)
        self.server: RedisServerProcess | None = None
        self.replicating_from: str | None = None  # "" = we are master, None = not decided
        self.bound_tunnel = False
        self.changed = asyncio.Event()

    async def start(self) -> None:
        c = self.config
        self.node_id = identity.host_id(c.data_dir, c.id)
        self.password = cluster.redis_password(cluster.load_cluster_key(c.cluster_key, c.cluster_key_file))
        if c.redis_url:
            self.log.info("using the existing Redis at %s; nothing to run", c.redis_url.split("@")[-1])
            return
        await self._start_server()

    def _server_config(self, membership: Membership | None) -> RedisServerConfig:
        # The tunnel address may not exist yet: "-" makes it optional; _bind_tunnel adds it once it does.
        bind = ("127.0.0.1", f"-{membership.tunnel_address}") if membership else ("127.0.0.1",)
        return RedisServerConfig(port=self.config.redis_port, data_dir=Path(self.config.data_dir) / "redis",
                                 password=self.password, bind=bind)

    async def _start_server(self) -> None:
        membership = Membership.load(self.config.data_dir)
        self.server = RedisServerProcess(self._server_config(membership))
        self.status("starting redis-server")
        await self.server.start()
        self.replicating_from = None
        self.bound_tunnel = False
        await self._follow_master()

    @property
    def client(self):
        return self.server.client()

    async def _follow_master(self) -> None:
        """Point the local Redis at the current master (or make it master)."""
        membership = Membership.load(self.config.data_dir)
        if membership is None:
            if not self.config.peer:  # bootstrapping: this node's Redis starts the cluster
                await self._replicate_from("")
            return
        async with self.client as client:
            if not self.bound_tunnel:
                self.bound_tunnel = await self._bind_tunnel(client, membership)
            try:
                master = await State(client).master()
            except RedisError:
                master = None
        if master is None:  # not replicated yet: the membership file knows
            target = "" if membership.master_node_id == self.node_id else membership.master_address
        else:
            target = "" if master.node_id == self.node_id else master.address
        await self._replicate_from(target)

    async def _bind_tunnel(self, client, membership: Membership) -> bool:
        bind = f"127.0.0.1 {membership.tunnel_address}"
        try:
            await client.config_set("bind", bind)
        except RedisError as exc:
            self.log.debug("cannot bind %s yet: %s", membership.tunnel_address, exc)
            return False
        self.log.info("redis-server listens on %s", bind)
        return True

    async def _replicate_from(self, address: str) -> None:
        if address == self.replicating_from:
            return
        async with self.client as client:
            if address:
                await client.replicaof(address, self.config.redis_port)
                self.log.info("local Redis replicates the master at %s:%d", address, self.config.redis_port)
            else:
                await client.replicaof("NO", "ONE")
                self.log.info("local Redis is the master")
        self.replicating_from = address
        self.status(f"redis-server: {'replica of ' + address if address else 'master'}")

    # -- loops ----------------------------------------------------------------------------------
    def tasks(self):
        if self.config.redis_url:
            return [self._watch_external()]
        return [self._supervise(), self._follower(), self._listen()]

    async def _supervise(self) -> None:
        """Restart redis-server when it dies, with backoff, and re-point it."""
        delay = 0.5
        while True:
            status = await self.server.wait()
            self.log.error("redis-server exited with status %s; restarting in %.1f s", status, delay)
            self.status("redis-server died: restarting")
            await asyncio.sleep(delay)
            try:
                await self._start_server()
                delay = 0.5
            except (RedisServerError, RedisError, OSError) as exc:
                self.log.error("restarting redis-server failed: %s", exc)
                delay = min(delay * 2, RESTART_BACKOFF_MAX)

    async def _listen(self) -> None:
        """A change of master (an event on the local Redis) wakes the follower at once."""
        while True:
            try:
                async with self.client as client:
                    async for event in State(client).events():
                        if event.kind == "master":
                            self.changed.set()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)

    async def _follower(self) -> None:
        """Main loop (it feeds the watchdog every tick): re-point replication when the master
        changes; checked every POLL while joining, then on each change event or resync interval."""
        loop = asyncio.get_running_loop()
        last_check = 0.0
        while True:
            settled = self.replicating_from is not None and self.bound_tunnel
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=TICK if settled else POLL)
            except asyncio.TimeoutError:
                pass
            self.progress()
            if settled and not self.changed.is_set() and loop.time() - last_check < self.config.resync_interval:
                continue
            self.changed.clear()
            last_check = loop.time()
            try:
                await self._follow_master()
            except (RedisError, OSError) as exc:
                self.log.warning("cannot check the master: %s", exc)

    async def _watch_external(self) -> None:
        """With --redis-url: report whether that Redis answers (its owner runs and replicates it)."""
        reachable = None
        async with aioredis.Redis.from_url(self.config.redis_url, socket_timeout=5) as client:
            while True:
                try:
                    await client.ping()
                    now = True
                except (RedisError, OSError) as exc:
                    now = False
                    self.log.debug("external Redis: %s", exc)
                if now != reachable:
                    (self.log.info if now else self.log.error)("the Redis at --redis-url is %s",
                                                               "reachable" if now else "unreachable")
                    self.status(f"external Redis {'reachable' if now else 'unreachable'}")
                    reachable = now
                self.progress()
                await asyncio.sleep(self.config.heartbeat_interval)

    async def shutdown(self) -> None:
        if self.server is not None:
            await self.server.stop()
