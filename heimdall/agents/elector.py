"""heimdall-elector: the node's Redis Sentinel, and the master record kept in step with it.

Sentinel decides (see heimdall.sentinel): a majority of the nodes' sentinels
agrees that the master is down and promotes the oldest surviving replica. This
daemon runs the node's sentinel on its tunnel address, keeps its quorum at a
majority of the current nodes, and turns Sentinel's choice into the master
record (node id, address, epoch) that every daemon follows. It listens to
every node's sentinel and acts on the first one that announces a promotion, so
the record moves as soon as any sentinel knows; the record's epoch goes up by
one per change of master and never backwards (heimdall/state/master.lua).
An isolated or returning old master cannot take writes meanwhile: heimdall-store
keeps min-replicas-to-write at 1, and its replicas follow the new master.

With ``witness = true`` (on a host that is no node, e.g. a peer) it runs only the
sentinel, registered with the master as a voter: the tie-breaker that lets a
two-node cluster elect. With ``--redis-url`` nothing is elected (that Redis is
its owner's); it only makes sure a master record exists.
"""
from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from heimdall import cluster, identity, sentinel
from heimdall.daemon import Daemon
from heimdall.identity import Membership
from heimdall.redis_server import RedisServerError, RedisServerProcess
from heimdall.sentinel import MASTER_NAME, MasterView, SentinelConfig
from heimdall.state import NodeRecord, State, StateError
from heimdall.state.connect import StateLink, probe_client

TICK = 1.0  # settled: check Sentinel's view and the record this often
FAST = 0.1  # while the record lags Sentinel's choice (e.g. the new master waits for a replica)
POLL = 0.5  # while this node is not a member yet, or its sentinel cannot start yet
PROBE_TIMEOUT = 1.0  # another node's sentinel or Redis that does not answer by then is taken as gone
LISTEN_RETRY = 1.0
LISTEN_PING = 1.0  # seconds between pings on each sentinel subscription
LISTEN_SILENCE = 4.0  # no answer for this long: the subscription is dead (its host vanished)


class ElectorAgent(Daemon):
    program = "heimdall-elector"

    def __init__(self, config, config_loader=None) -> None:
        super().__init__(config, config_loader)
        self.sentinel: RedisServerProcess | None = None
        self.link: StateLink | None = None
        self.wake = asyncio.Event()
        self.announced: list[str] = []  # new masters announced by some sentinel, not handled yet
        self.listeners: dict[str, asyncio.Task] = {}  # sentinel address -> its event listener
        self.members: set[str] = set()  # the node ids last seen: a node gone from them was removed
        self.removed = False  # this node was removed from the cluster (said once)
        self.voters = 0  # a witness: the voters it last counted (nodes and witnesses)

    async def start(self) -> None:
        c = self.config
        self.node_id = identity.host_id(c.data_dir, c.id)
        cluster_key = cluster.load_cluster_key(c.cluster_key, c.cluster_key_file)
        self.password = cluster.redis_password(cluster_key)
        self.link = StateLink(c, cluster_key)
        if c.redis_url:
            self.log.info("using the Redis at --redis-url: its owner keeps it available; no sentinel runs here")

    def tasks(self):
        return [self._keep_record() if self.config.redis_url else self._elect()]

    # -- with --redis-url: only the record ----------------------------------------------------
    async def _keep_record(self) -> None:
        """One shared Redis: name the first node that gets here master (the peer-to-peer hub), once."""
        while True:
            self.progress()
            try:
                state = self.link.state
                own = await state.node(self.node_id) if await state.master() is None else None
                if own is not None:
                    record = await state.elect_master(self.node_id, own.tunnel_address)
                    self.log.info("master record set: %s, epoch %d", record.node_id, record.epoch)
                self.status("external Redis: keeping the master record")
            except (RedisError, OSError, StateError) as exc:
                self.log.debug("cannot check the master record: %s", exc)
            await asyncio.sleep(self.config.heartbeat_interval)

    # -- the embedded cluster: a sentinel per node --------------------------------------------
    async def _elect(self) -> None:
        """Main loop (it feeds the watchdog): keep the sentinel running and configured, the record in step."""
        while True:
            self.progress()
            try:
                delay = await self._step()
            except (RedisError, OSError, RedisServerError, StateError) as exc:
                self.log.warning("election step failed: %s", exc)
                delay = POLL
            try:
                await asyncio.wait_for(self.wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass
            self.wake.clear()

    async def _step(self) -> float:
        return await (self._witness_step() if self.config.witness else self._node_step())

    async def _node_step(self) -> float:
        membership = Membership.load(self.config.data_dir)
        if membership is None:
            self.status("waiting for this node to join a cluster")
            return POLL
        state = self.link.state
        nodes = await state.nodes()
        if self.node_id not in nodes:
            if not nodes:
                self.status("waiting for the local Redis to hold this node's record")
            elif not self.removed:  # the cluster's nodes are here, this one is not: it was removed
                self.removed = True
                self.log.error("this node was removed from the cluster: it does not vote (its sentinel stops); "
                               "to return, delete %s/membership.json and join again", self.config.data_dir)
                self.status("removed from the cluster")
                if self._sentinel_running():
                    await self.sentinel.stop()
                    self.sentinel = None
            return POLL
        self.removed = False
        voters = len(nodes) + len(await state.witnesses())
        if not self._sentinel_running():
            others = [n.tunnel_address for n in nodes.values() if n.id != self.node_id]
            record = await state.master()
            fallback = record.address if record is not None else membership.master_address
            master = await self._best_known_master(others, fallback, {n.tunnel_address for n in nodes.values()})
            if not await self._start_sentinel(membership.tunnel_address, master, voters):
                return POLL
        self._listen_to({n.tunnel_address for n in nodes.values()})
        await self._forget_removed(set(nodes))
        while self.announced:  # any sentinel's word is enough to move the record at once
            await self._record_follows(self.announced.pop(0), nodes)
        view = await self._steer(voters)
        if view.down:
            self.status(f"master {view.ip} is down (as this sentinel sees it); waiting for the election")
            return TICK
        return await self._record_follows(view.ip, nodes)

    async def _forget_removed(self, members: set[str]) -> None:
        """A removed node's sentinel must stop counting as a voter: SENTINEL RESET forgets every sentinel
        and replica, and the ones still there announce themselves again within seconds."""
        gone = self.members - members
        self.members = members
        if gone:
            async with self.sentinel.client() as local:
                await local.execute_command("SENTINEL", "RESET", MASTER_NAME)
            self.log.info("node(s) %s removed: sentinel reset to forget them", ", ".join(sorted(gone)))

    async def _witness_step(self) -> float:
        """A witness: a sentinel that votes, registered as a voter with the master, and nothing else."""
        c = self.config
        announce = c.sentinel_announce_ip or await self._interface_address()
        if not announce:
            self.status(f"waiting for an address on {c.interface_name} (or set sentinel-announce-ip)")
            return POLL
        if not self._sentinel_running():
            master = await self._best_known_master(c.witness_of or [], None)
            if master is None:
                self.status(f"no node's sentinel answers at {', '.join(c.witness_of or []) or '(witness-of unset)'}")
                return POLL
            self.voters = len(c.witness_of or []) + 1  # until the master's node list says more
            if not await self._start_sentinel(announce, master, self.voters):
                return POLL
        view = await self._steer(self.voters)
        if view.down:
            self.status(f"master {view.ip} is down (as this sentinel sees it); voting")
            return TICK
        async with self._redis(view.ip) as master:
            state = State(master)
            nodes, witnesses = await state.nodes(), await state.witnesses()
            if witnesses.get(self.node_id) != announce:
                await state.register_witness(self.node_id, announce)
                self.log.info("registered as a witness of %d nodes, sentinel at %s", len(nodes), announce)
                witnesses[self.node_id] = announce
        self.voters = len(nodes) + len(witnesses)  # the quorum follows at the next step
        self.status(f"witness: master at {view.ip}, {len(nodes)} nodes, {len(witnesses)} witnesses")
        return TICK

    async def _interface_address(self) -> str | None:
        from heimdall import uplink  # pyroute2: only a witness loads it

        try:
            return await asyncio.to_thread(uplink.interface_ipv4, self.config.interface_name)
        except uplink.UplinkError:
            return None

    async def _steer(self, voters: int) -> MasterView:
        """Keep the sentinel's quorum at a majority of the voters; return its view of the master."""
        async with self.sentinel.client() as local:
            view = MasterView.from_reply(await local.execute_command("SENTINEL", "MASTER", MASTER_NAME))
            quorum = sentinel.majority(voters)
            if view.quorum != quorum:
                await local.execute_command("SENTINEL", "SET", MASTER_NAME, "quorum", str(quorum))
                self.log.info("quorum set to %d of %d voters", quorum, voters)
        return view

    def _sentinel_running(self) -> bool:
        return self.sentinel is not None and self.sentinel.process.returncode is None

    async def _record_follows(self, address: str, nodes: dict[str, NodeRecord]) -> float:
        """Name the node whose Redis at ``address`` Sentinel made master in that Redis, if the record
        there says otherwise. Returns how soon to look again."""
        node = next((n for n in nodes.values() if n.tunnel_address == address), None)
        if node is None:
            self.log.warning("Sentinel names %s as master, which is no node's tunnel address; ignored", address)
            return TICK
        record = await self.link.state.master()
        if record is not None and (record.node_id, record.address) == (node.id, address):
            self.status(f"master {node.name} ({node.id}) at {address}, epoch {record.epoch}")
            return TICK
        async with self._redis(address) as master:
            if (await master.info("replication"))["role"] != "master":
                return FAST  # not promoted yet
            try:
                record = await State(master).elect_master(node.id, address)
            except RedisError as exc:  # e.g. NOREPLICAS: the new master waits for its first replica
                self.log.debug("cannot write the master record to %s yet: %s", address, exc)
                return FAST
        self.log.info("master record: %s (%s) at %s, epoch %d", node.name, node.id, address, record.epoch)
        return FAST  # until the local replica shows it

    async def _start_sentinel(self, announce_ip: str, master: str, voters: int) -> bool:
        c = self.config
        config = SentinelConfig(port=c.sentinel_port, data_dir=Path(c.data_dir) / "sentinel", password=self.password,
                                announce_ip=announce_ip, myid=sentinel.sentinel_id(self.node_id),
                                master_ip=master, redis_port=c.redis_port, quorum=sentinel.majority(voters),
                                down_after_ms=int(c.failover_after * 1000))
        process = RedisServerProcess(config)
        try:
            await process.start()
        except RedisServerError as exc:  # e.g. the tunnel address is not up yet
            self.log.warning("sentinel not started yet: %s", exc)
            return False
        self.sentinel = process
        self.log.info("sentinel %s on %s:%d monitors the master at %s (quorum %d of %d voters)", config.myid[:8],
                      announce_ip, config.port, master, config.quorum, voters)
        return True

    async def _best_known_master(self, sentinels: list[str], fallback: str | None,
                                 candidates: set[str] | None = None) -> str | None:
        """Where to point a (re)started sentinel: the master of the newest configuration (highest
        config epoch) that the sentinels at ``sentinels`` report, else ``fallback``. A node names only
        ``candidates`` (its nodes' tunnel addresses): whatever else a sentinel says is not followed."""
        views = await asyncio.gather(*(self._sentinel_view(address) for address in sentinels))
        known = [v for v in views if v is not None and (candidates is None or v.ip in candidates)]
        return max(known, key=lambda v: v.config_epoch).ip if known else fallback

    async def _sentinel_view(self, address: str) -> MasterView | None:
        try:
            async with self._redis(address, self.config.sentinel_port) as other:
                return MasterView.from_reply(await other.execute_command("SENTINEL", "MASTER", MASTER_NAME))
        except (RedisError, OSError, KeyError, ValueError):
            return None

    def _redis(self, host: str, port: int | None = None) -> aioredis.Redis:
        """A short-lived client to another node's Redis (or sentinel) that gives up quickly."""
        return probe_client(host, port or self.config.redis_port, self.password, PROBE_TIMEOUT)

    # -- every sentinel's announcements ---------------------------------------------------------
    def _listen_to(self, addresses: set[str]) -> None:
        for address in addresses - self.listeners.keys():
            self.listeners[address] = asyncio.ensure_future(self._listen(address))
        for address in self.listeners.keys() - addresses:
            self.listeners.pop(address).cancel()

    async def _listen(self, address: str) -> None:
        """Queue every new master ``address``'s sentinel announces, and wake the main loop. A sentinel
        silent for LISTEN_SILENCE (pings unanswered: its host vanished) is dialled again."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self._redis(address, self.config.sentinel_port) as client:
                    async with client.pubsub() as pubsub:
                        await pubsub.subscribe(*sentinel.SWITCH_EVENTS)
                        heard = pinged = loop.time()
                        while loop.time() - heard < LISTEN_SILENCE:
                            message = await pubsub.get_message(timeout=LISTEN_PING)
                            now = loop.time()
                            if message is not None:
                                heard = now
                                self._announce(address, message)
                            if now - pinged >= LISTEN_PING:
                                await pubsub.ping()
                                pinged = now
                        self.log.debug("sentinel at %s went silent", address)
            except (RedisError, OSError) as exc:
                self.log.debug("sentinel at %s: %s", address, exc)
            await asyncio.sleep(LISTEN_RETRY)

    def _announce(self, address: str, message: dict) -> None:
        if message["type"] != "message":
            return
        new_master = sentinel.switched_to(message["channel"], message["data"])
        if new_master is not None:
            self.log.info("sentinel at %s: %s %s", address, message["channel"], message["data"])
            self.announced.append(new_master)
            self.wake.set()

    async def shutdown(self) -> None:
        for listener in self.listeners.values():
            listener.cancel()
        await asyncio.gather(*self.listeners.values(), return_exceptions=True)
        if self.sentinel is not None:
            await self.sentinel.stop()
        if self.link is not None:
            await self.link.close()
