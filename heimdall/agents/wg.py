"""heimdall-wg: the node's WireGuard interface, tunnel address, routes, forwarding and firewall.

A SnapshotFeed on the local Redis (change events, plus a revision check that
catches full replica syncs) only marks the work; one reconcile loop takes the latest
snapshot, derives the desired interface (topology.node_desired), diffs it against
the kernel and applies the difference — single peers, never a new interface. A
periodic full resync is the safety net for lost events and repairs drift (a peer
removed by hand). When Redis is unreachable the interface keeps its last applied
state: tunnels never drop because the control plane is away.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from pathlib import Path

from redis.exceptions import RedisError

from heimdall import cluster, firewall, identity, uplink
from heimdall.api import join
from heimdall.api.tls import TlsOptions
from heimdall.daemon import Daemon, watchdog_interval
from heimdall.identity import Membership
from heimdall.reconciler import apply_desired
from heimdall.state import NodeRecord, Pool, Snapshot, StateError
from heimdall.state.connect import StateLink
from heimdall.state.feed import SnapshotFeed
from heimdall.topology import node_desired
from heimdall.wg import keys, make_backend
from heimdall.wg.model import WireGuardError, join_endpoint

BACKOFF_MAX = 5.0
MEMBER_WAIT = 0.2
FIRST_READ_TIMEOUT = 2.0
HANDSHAKE_EVERY = 5  # heartbeats
IDLE_WAKE = 5.0  # seconds the reconcile loop sleeps at most when idle (less when the watchdog needs it)


class WgAgent(Daemon):
    program = "heimdall-wg"

    def __init__(self, config, config_loader=None) -> None:
        super().__init__(config, config_loader)
        self.dirty = asyncio.Event()
        self.link: StateLink | None = None
        self.firewall: firewall.Firewall | None = None

    # -- start: interface first, then membership, then the first reconcile --------------------
    async def start(self) -> None:
        c = self.config
        self.cluster_key = cluster.load_cluster_key(c.cluster_key, c.cluster_key_file)
        self.node_id = identity.host_id(c.data_dir, c.id)
        private_key = identity.private_key(c.data_dir)
        self.public_key = keys.public_key(private_key)
        # pyroute2's synchronous API cannot run inside an event loop: kernel calls go to a thread.
        self.uplink, endpoint_ip = await asyncio.to_thread(uplink.resolve, c.node_interface, c.endpoint_ip)
        self.endpoint = join_endpoint(endpoint_ip, c.endpoint_port)
        self.grpc_address = c.advertise_grpc_address or f"tcp://{join_endpoint(endpoint_ip, c.addr.rsplit(':', 1)[1])}"
        self.backend = await asyncio.to_thread(make_backend, c.interface_name, c.wireguard_backend)
        self.status(f"bringing up {c.interface_name} ({self.backend.kind})")
        ifindex = await asyncio.to_thread(self.backend.ensure_interface)
        await asyncio.to_thread(self.backend.configure, private_key, c.endpoint_port)
        self.log.info("%s is up (ifindex %d, %s backend), public key %s", c.interface_name, ifindex,
                      self.backend.kind, self.public_key)
        self.link = StateLink(c, self.cluster_key)
        membership = Membership.load(c.data_dir)
        if membership is None:
            await (self._join() if c.peer else self._bootstrap())
        await asyncio.to_thread(firewall.enable_ip_forwarding)
        self.firewall = await asyncio.to_thread(firewall.Firewall)  # it runs `iptables -V`
        await asyncio.to_thread(self.firewall.apply, self._firewall_spec())
        self.feed = SnapshotFeed(self.link.state, on_snapshot=self._on_snapshot)
        try:  # serve the current state at once when the local Redis has it; else the feed brings it
            await self._reconcile(await asyncio.wait_for(self.link.state.snapshot(), FIRST_READ_TIMEOUT))
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self.log.warning("local Redis not readable yet (%s): keeping the interface as it is", exc)

    def _firewall_spec(self) -> firewall.FirewallSpec:
        c = self.config
        return firewall.FirewallSpec(uplink=self.uplink, wg_interface=c.interface_name,
                                     tunnel_networks=(str(c.node_network), str(c.peer_network)),
                                     isolated_networks=() if c.allow_peer_to_peer else (str(c.peer_network),))

    async def _bootstrap(self) -> Membership:
        """First node of a new cluster: register in the local Redis (the master) and name itself master."""
        self.status("bootstrapping a new cluster: waiting for the local Redis")
        state = self.link.state
        while True:
            try:
                record = await self._register(state)
                if await state.master() is None:
                    await state.elect_master(self.node_id, record.tunnel_address)
                break
            except (RedisError, OSError) as exc:
                self.log.debug("local Redis not ready: %s", exc)
                await asyncio.sleep(MEMBER_WAIT)
        membership = Membership(self.node_id, record.subnet, self.node_id, record.tunnel_address)
        membership.save(self.config.data_dir)
        self.log.info("bootstrapped a new cluster: subnet %s, this node is master", record.subnet)
        return membership

    async def _register(self, state) -> NodeRecord:
        c = self.config
        return await state.upsert_node(self.node_id, name=c.name, public_key=self.public_key, endpoint=self.endpoint,
                                       grpc_address=self.grpc_address,
                                       pool=Pool(c.node_network, c.node_subnet_prefix))

    async def _join(self) -> Membership:
        """Join through an existing node's API; bring up tunnels to every node at once from its answer."""
        self.status(f"joining the cluster via {self.config.peer}")
        delay = MEMBER_WAIT
        while True:
            status, answer, reason = await self._join_in_child()
            if status == join.REFUSED:
                # Exit 2, like a configuration error: a wrong cluster key does not get better by
                # retrying, and the units' RestartPreventExitStatus=2 stops systemd from looping.
                self.log.error("join refused by %s: %s", self.config.peer, reason)
                raise SystemExit(2)
            if status == 0:
                break
            self.log.warning("cannot join via %s (%s); retrying in %.1f s", self.config.peer, reason, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
        nodes = {n["id"]: NodeRecord(**n) for n in answer["nodes"]}
        # The local Redis has no data until it replicates, which needs the tunnel: apply the answer now.
        await self._apply(Snapshot(rev=0, nodes=nodes))
        master = answer["master"]
        membership = Membership(self.node_id, answer["subnet"], master["node_id"], master["address"])
        membership.save(self.config.data_dir)
        self.log.info("joined: subnet %s, master %s at %s", answer["subnet"], master["node_id"], master["address"])
        return membership

    async def _join_in_child(self) -> tuple[int, dict | None, str]:
        """(exit status, answer, reason) of one join attempt by ``python -m heimdall.api.join``."""
        request = {"address": self.config.peer, "cluster_key": self.cluster_key.decode(), "node_id": self.node_id,
                   "name": self.config.name, "public_key": self.public_key, "endpoint": self.endpoint,
                   "grpc_address": self.grpc_address,
                   "tls": {k: str(v) if isinstance(v, Path) else v
                           for k, v in dataclasses.asdict(TlsOptions.from_config(self.config)).items()}}
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "heimdall.api.join", stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await child.communicate(json.dumps(request).encode())
        reason = err.decode(errors="replace").strip().splitlines()[-1:] or [f"exit status {child.returncode}"]
        if child.returncode != 0:
            return child.returncode, None, reason[0]
        return 0, json.loads(out), ""

    # -- the loops ---------------------------------------------------------------------------
    def tasks(self):
        return [self.feed.run(), self._reconciler(), self._resync(), self._heartbeat()]

    def _on_snapshot(self, snapshot: Snapshot) -> None:
        """The feed has a newer snapshot (an event, or a changed revision): only mark the work."""
        self.dirty.set()

    async def _reconciler(self) -> None:
        """The main work loop (it alone feeds the watchdog): apply the latest snapshot when marked."""
        idle = min(IDLE_WAKE, (watchdog_interval() or IDLE_WAKE) / 2)
        while True:
            try:
                await asyncio.wait_for(self.dirty.wait(), timeout=idle)
            except asyncio.TimeoutError:
                pass
            self.progress()
            if self.dirty.is_set():
                self.dirty.clear()
                if self.feed.latest is not None:
                    await self._reconcile(self.feed.latest)

    async def _reconcile(self, snapshot: Snapshot) -> None:
        state = self.link.follow(snapshot.master, self.node_id)
        own = snapshot.nodes.get(self.node_id)
        if own is None:
            # A replica still syncing (or a node not yet registered) knows nothing useful: keep what we have.
            self.log.debug("own node record not in the local Redis yet (rev %d)", snapshot.rev)
            return
        await self._apply(snapshot)
        if (own.public_key, own.endpoint, own.grpc_address) != (self.public_key, self.endpoint, self.grpc_address):
            try:  # our key or address changed since we joined: publish the new ones
                await self._register(state)
            except (RedisError, OSError, StateError) as exc:
                self.log.warning("cannot update our node record on the master: %s", exc)

    async def _apply(self, snapshot: Snapshot) -> None:
        desired = node_desired(snapshot, self.node_id, self.public_key, str(self.config.peer_network))
        try:
            changed = await asyncio.to_thread(apply_desired, self.backend, desired)
        except WireGuardError as exc:
            self.log.error("applying rev %d failed: %s; retrying", snapshot.rev, exc)
            await asyncio.sleep(1.0)
            self.dirty.set()
            return
        if changed:
            self.log.info("applied rev %d: %s", snapshot.rev, changed)
        self.status(f"rev {snapshot.rev}: {len(desired.peers)} WireGuard peers, {len(desired.routes)} routes")

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_interval)
            self.dirty.set()
            try:
                await asyncio.to_thread(self.firewall.apply, self._firewall_spec())
            except firewall.FirewallError as exc:
                self.log.error("firewall resync failed: %s", exc)

    async def _heartbeat(self) -> None:
        """Liveness for the elector and `hctl status`: our heartbeat every beat, our WireGuard
        handshake times every few beats when they changed (written to the master, no change event)."""
        reported: dict[str, int] | None = None
        beat = 0
        while True:
            try:
                if self.feed.latest is not None:  # until a snapshot names the master, writes would go nowhere
                    await self.link.state.heartbeat(self.node_id, time.time())
                    if beat % HANDSHAKE_EVERY == 0:  # handshakes renew every 2 minutes: no need to look often
                        reported = await self._report_handshakes(reported)
                    beat += 1
            except (RedisError, OSError, WireGuardError) as exc:
                self.log.debug("heartbeat failed: %s", exc)
            await asyncio.sleep(self.config.heartbeat_interval)

    async def _report_handshakes(self, reported: dict[str, int] | None) -> dict[str, int]:
        device = await asyncio.to_thread(self.backend.device)
        handshakes = {key: int(status.last_handshake) for key, status in device.peers.items() if status.last_handshake}
        if handshakes != reported:
            await self.link.state.report_handshakes(self.node_id, handshakes)
        return handshakes

    async def reload(self, config) -> None:
        """SIGHUP: new timers and firewall settings apply at once; interface and identity need a restart."""
        fixed = ("interface_name", "endpoint_port", "data_dir", "id", "node_network", "node_subnet_prefix")
        changed = [name for name in fixed if config.values[name] != self.config.values[name]]
        if changed:
            self.log.warning("reload: %s only change with a restart; keeping the running values", ", ".join(changed))
            config.values.update({name: self.config.values[name] for name in changed})
        self.config = config
        try:
            await asyncio.to_thread(self.firewall.apply, self._firewall_spec())
        except firewall.FirewallError as exc:
            self.log.error("reload: firewall not updated: %s", exc)
        self.dirty.set()

    async def shutdown(self) -> None:
        """Clean stop: our firewall chains go; the interface stays so tunnels survive restarts."""
        if self.firewall is not None:
            await asyncio.to_thread(self.firewall.remove)
        if self.link is not None:
            await self.link.close()
