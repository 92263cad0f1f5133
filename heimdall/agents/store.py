"""heimdall-store: the node's own redis-server, replicating the master over the tunnel.

It writes the Redis config itself (bind 127.0.0.1 and the tunnel address only,
a password derived from the cluster key, data under the data dir), runs
redis-server as a child and restarts it if it dies. It points the local Redis at
the master the node's sentinel (heimdall-elector) names, woken by its
``+switch-master``; before that sentinel runs, at the master named by the
replicated ``heimdall:master`` record, or by the membership file while the
local Redis is still empty. It also keeps the settings that make failover safe:
``replica-priority`` by join order (Sentinel promotes the oldest surviving node)
and ``min-replicas-to-write`` (see :meth:`StoreAgent._fence`): once a failover
is possible, a master without a replica in touch refuses writes (an isolated or
stale master must not take writes the others never see), unless a majority of
the voters' sentinels name it master (the survivor of two nodes and a witness).
With ``--redis-url`` there is nothing to run: the daemon only watches that Redis.
"""
from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from heimdall import cluster, identity
from heimdall.daemon import Daemon
from heimdall.identity import Membership
from heimdall.redis_server import RedisServerConfig, RedisServerProcess, RedisServerError
from heimdall import sentinel as election
from heimdall.sentinel import MASTER_NAME
from heimdall.state import MasterRecord, NodeRecord, State
from heimdall.state.connect import external_redis, probe_client

POLL = 0.2  # membership file and bind checks while joining; not on any steady-state path
TICK = 1.0  # the settled main loop's wake-up: progress for the watchdog, nothing more
RESTART_BACKOFF_MAX = 10.0
SENTINEL_TIMEOUT = 1.0
MAX_REPLICA_LAG = 2  # seconds without a replica's acknowledgement before it stops counting for writes


def replication_target(node_id: str, membership: Membership, master: MasterRecord | None,
                       nodes: dict[str, NodeRecord], elected: str | None) -> str:
    """Where the local Redis replicates from ("" = it is the master): the sentinel's choice (the newest
    word) if it names a node's tunnel address, else the replicated master record, else, while the local
    Redis is still empty, the master this node joined. The master's password goes wherever this points,
    so an address that is no node's is never taken, whoever names it."""
    if elected is not None and elected in {n.tunnel_address for n in nodes.values()}:
        return "" if elected == membership.tunnel_address else elected
    if master is None:
        return "" if membership.master_node_id == node_id else membership.master_address
    return "" if master.node_id == node_id else master.address


def address_present(address: str) -> bool:
    """True if ``address`` is assigned here (a socket can bind it)."""
    with socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET) as probe:
        try:
            probe.bind((address, 0))
        except OSError:
            return False
    return True


class StoreAgent(Daemon):
    program = "heimdall-store"

    def __init__(self, config, config_loader=None) -> None:
        super().__init__(config, config_loader)
        self.server: RedisServerProcess | None = None
        self.replicating_from: str | None = None  # "" = we are master, None = not decided
        self.bound_tunnel = False
        self.tunnel_address: str | None = None  # this node's, once redis-server listens on it
        self.tuned: int | None = None  # the replica-priority last set
        self.voters: list[str] = []  # the sentinels' addresses: every node's tunnel address, every witness's
        self.can_fail_over = False  # two nodes or more, three voters or more
        self.min_replicas: int | None = None  # min-replicas-to-write last set
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
        # A member starts refusing writes without a replica (it may be a stale master back from the dead)
        # until _fence has looked at the cluster.
        safety = {"min-replicas-to-write": "1" if membership else "0", "min-replicas-max-lag": str(MAX_REPLICA_LAG)}
        return RedisServerConfig(port=self.config.redis_port, data_dir=Path(self.config.data_dir) / "redis",
                                 password=self.password, bind=bind, extra=safety)

    async def _start_server(self) -> None:
        membership = Membership.load(self.config.data_dir)
        self.server = RedisServerProcess(self._server_config(membership))
        self.status("starting redis-server")
        await self.server.start()
        self.replicating_from = None
        self.bound_tunnel = False
        self.tuned = self.min_replicas = None
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
                if not self.bound_tunnel:
                    # Replication runs over the tunnel: it is pointed once the address is up. (A bind change
                    # during a replication handshake left redis-server 7.0 refusing even 127.0.0.1.)
                    return
            try:
                state = State(client)
                master, nodes = await state.master(), await state.nodes()
                if nodes:
                    await self._tune(client, nodes, await state.witnesses())
            except RedisError:
                master, nodes = None, {}
        elected = await self._sentinel_master()
        if elected is not None and elected not in {n.tunnel_address for n in nodes.values()}:
            self.log.warning("the local sentinel names %s master, which is no node's tunnel address: ignored", elected)
        await self._replicate_from(replication_target(self.node_id, membership, master, nodes, elected))

    async def _sentinel_master(self) -> str | None:
        """The master's address as the node's own sentinel sees it; None while it has no answer."""
        try:
            async with self._sentinel() as sentinel:
                answer = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
        except (RedisError, OSError) as exc:
            self.log.debug("no answer from the local sentinel: %s", exc)
            return None
        return answer[0] if answer else None

    def _sentinel(self, host: str = "127.0.0.1") -> aioredis.Redis:
        return probe_client(host, self.config.sentinel_port, self.password, SENTINEL_TIMEOUT)

    async def _tune(self, client, nodes: dict[str, NodeRecord], witnesses: dict[str, str]) -> None:
        """The oldest node is promoted first, a node removed from the cluster never (priority 0); note who
        votes in elections (for :meth:`_fence`)."""
        oldest_first = sorted(nodes.values(), key=lambda n: (n.joined_at, n.id))
        rank = next((i for i, n in enumerate(oldest_first, 1) if n.id == self.node_id), 0)
        self.voters = [n.tunnel_address for n in oldest_first] + sorted(witnesses.values())
        self.can_fail_over = len(nodes) > 1 and len(self.voters) >= 3
        if rank != self.tuned:
            await client.config_set("replica-priority", rank)
            self.log.info("replica-priority %d (join order)", rank)
            self.tuned = rank

    async def _fence(self) -> None:
        """Keep min-replicas-to-write: 0 where no failover can happen (one node; two without a witness);
        else 1, so a master cut off from its replicas stops taking writes, unless it has no replica in touch
        and a majority of the voters' sentinels name it master: then writes go on, unreplicated, until a
        replica is back (the survivor of two nodes and a witness)."""
        if self.tuned is None or self.tunnel_address is None:
            return
        wanted = 1 if self.can_fail_over else 0
        if wanted and self.replicating_from == "":
            async with self.client as client:
                info = await client.info("replication")
            in_touch = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)
                        and v.get("state") == "online" and int(v.get("lag", MAX_REPLICA_LAG + 1)) <= MAX_REPLICA_LAG]
            if not in_touch and await self._named_master_by_majority(self.tunnel_address):
                wanted = 0
        if wanted != self.min_replicas:
            async with self.client as client:
                await client.config_set("min-replicas-to-write", wanted)
            self.log.info("min-replicas-to-write %d%s", wanted, " (master alone, named by a majority of the "
                          "sentinels: writes are not replicated until a replica is back)"
                          if not wanted and self.can_fail_over else "")
            self.min_replicas = wanted

    async def _named_master_by_majority(self, own_address: str) -> bool:
        async def names_us(address: str) -> bool:
            try:
                async with self._sentinel(address) as sentinel:
                    answer = await sentinel.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME)
            except (RedisError, OSError):
                return False
            return bool(answer) and answer[0] == own_address

        votes = await asyncio.gather(*(names_us(address) for address in self.voters))
        return sum(votes) >= election.majority(len(self.voters))

    async def _bind_tunnel(self, client, membership: Membership) -> bool:
        # Only once the address exists: a CONFIG SET bind that fails is noisy ("restoring previous settings").
        if not address_present(membership.tunnel_address):
            self.log.debug("cannot bind %s yet: the address is not up", membership.tunnel_address)
            return False
        bind = f"127.0.0.1 {membership.tunnel_address}"
        try:
            await client.config_set("bind", bind)
            await client.config_set("replica-announce-ip", membership.tunnel_address)  # as sentinels know it
        except RedisError as exc:
            self.log.debug("cannot bind %s yet: %s", membership.tunnel_address, exc)
            return False
        self.log.info("redis-server listens on %s", bind)
        self.tunnel_address = membership.tunnel_address
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
        return [self._supervise(), self._follower(), self._listen(), self._listen_sentinel()]

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
        """A change of master or of the voters (an event on the local Redis) wakes the follower at once."""
        while True:
            try:
                async with self.client as client:
                    async for event in State(client).events():
                        if event.kind in ("master", "node", "witness"):  # who is master, or who votes
                            self.changed.set()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)

    async def _listen_sentinel(self) -> None:
        """The node's sentinel switching to a new master wakes the follower at once."""
        while True:
            try:
                async with self._sentinel() as sentinel, sentinel.pubsub() as pubsub:
                    await pubsub.subscribe("+switch-master")
                    while True:
                        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=TICK)
                        if message is not None:
                            self.log.info("the local sentinel switched the master: %s", message["data"])
                            self.changed.set()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)

    async def _follower(self) -> None:
        """Main loop (it feeds the watchdog every tick): re-point replication when the master
        changes; checked every POLL while joining, then on each change event or resync interval."""
        loop = asyncio.get_running_loop()
        last_check = 0.0
        while True:
            # Settled once replicating (or master), bound to the tunnel and tuned (which needs the node list,
            # i.e. a first sync of a joining node's Redis, whose events it missed).
            settled = self.replicating_from is not None and self.bound_tunnel and self.tuned is not None
            try:
                await asyncio.wait_for(self.changed.wait(), timeout=TICK if settled else POLL)
            except asyncio.TimeoutError:
                pass
            self.progress()
            try:
                await self._fence()
            except (RedisError, OSError) as exc:
                self.log.warning("cannot check min-replicas-to-write: %s", exc)
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
        async with external_redis(self.config.redis_url, socket_timeout=5) as client:
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
