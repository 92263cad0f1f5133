"""heimdall-peer: an access-only peer's interface, pushed from a node's API.

It connects to one node (Connect, then the Watch stream), applies every pushed
configuration as a diff with the same reconciler the nodes use, and when its
node goes away it moves to the next one — configured addresses first, then the
nodes it has learned — without touching the tunnels to the other nodes. A
deauthorized peer (the stream ends and Connect is refused) drops its peers.

While it runs, the network's names resolve on the peer host: the nodes pushed
as DNS servers answer the pushed domain (heimdall.dns.host: split DNS through
systemd-resolved, else a reversible change to /etc/resolv.conf). Stopping, or
being cut off, undoes it.
"""
from __future__ import annotations

import asyncio
import ipaddress

import grpc

from heimdall import identity, settings
from heimdall.api.v1 import heimdall_pb2, heimdall_pb2_grpc
from heimdall.daemon import Daemon
from heimdall.dns import host as host_dns
from heimdall.reconciler import apply_desired
from heimdall.topology import Desired
from heimdall.wg import keys, make_backend
from heimdall.wg.model import WgPeer, WireGuardError

CONNECT_TIMEOUT = 5.0
BACKOFF_FIRST = 0.2  # between unreachable nodes, doubling up to BACKOFF_MAX
BACKOFF_MAX = 5.0
AUTHORIZATION_POLL = 1.0  # a refused peer asks again this often: an operator may authorize it any moment


class PushedConfigError(ValueError):
    """A node pushed a configuration that does not make sense; it is not applied."""


def desired_from_config(config: heimdall_pb2.PeerConfig) -> Desired:
    """The interface a pushed PeerConfig describes; PushedConfigError if any part is malformed."""
    try:
        address = ipaddress.ip_interface(config.address)
        peers = {}
        for entry in config.peers:
            keys.validate_key(entry.public_key)
            peers[entry.public_key] = WgPeer(entry.public_key, tuple(entry.allowed_ips),
                                             endpoint=entry.endpoint or None,
                                             persistent_keepalive=entry.persistent_keepalive)
    except (ValueError, TypeError) as exc:
        raise PushedConfigError(str(exc)) from None
    routes = frozenset(net for p in peers.values() for net in p.allowed_ips)
    return Desired(frozenset({str(address)}), routes, peers)


class PeerAgent(Daemon):
    program = "heimdall-peer"

    def __init__(self, config, config_loader=None) -> None:
        super().__init__(config, config_loader)
        self.desired: Desired | None = None
        self.learned: list[str] = []
        self.backoff = BACKOFF_FIRST
        self.reconciling = asyncio.Lock()
        self.resolver = host_dns.host_resolver(config.dns_resolver, config.interface_name, config.data_dir)
        # (servers, domain) installed on the host; at first unknown (a run that crashed may have left
        # some), so the first "none" still undoes them.
        self.names: tuple[tuple[str, ...], str] | None = ((), "")

    async def start(self) -> None:
        c = self.config
        self.peer_id = identity.host_id(c.data_dir, c.id)
        private_key = identity.private_key(c.data_dir)
        self.public_key = keys.public_key(private_key)
        self.backend = await asyncio.to_thread(make_backend, c.interface_name, c.wireguard_backend)
        await asyncio.to_thread(self.backend.ensure_interface)
        await asyncio.to_thread(self.backend.configure, private_key, 0)
        self.log.info("peer %s: %s is up, public key %s", self.peer_id, c.interface_name, self.public_key)

    def tasks(self):
        return [self._session(), self._resync()]

    def _candidates(self) -> list[str]:
        return list(dict.fromkeys([*settings.peer_node_addresses(self.config.values), *self.learned]))

    async def _session(self) -> None:
        """Stay connected to some node; each failure moves on to the next candidate."""
        from heimdall.api import client as api_client

        index = 0
        while True:
            candidates = self._candidates()
            address = candidates[index % len(candidates)]
            try:
                async with api_client.dial(address, api_client.TlsOptions.from_config(self.config)) as channel:
                    await self._follow(heimdall_pb2_grpc.HeimdallStub(channel), address)
                continue  # the node ended the stream: ask again at once (Connect tells whether we still may)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.PERMISSION_DENIED:
                    await self._cut_off(exc.details())
                    wait = AUTHORIZATION_POLL
                else:
                    wait = self._next_node(address, f"{exc.code().name} ({exc.details()})")
                    index += 1
            except (api_client.ApiUnavailable, settings.ConfigError) as exc:  # e.g. TLS: unreachable, bad file
                wait = self._next_node(address, str(exc))
                index += 1
            await asyncio.sleep(wait)

    def _next_node(self, address: str, why: str) -> float:
        """Log a failed node; the seconds to wait before trying the next one (doubling)."""
        self.log.warning("node %s: %s; trying the next node", address, why)
        self.status(f"no node reachable at {address}: trying the next one")
        wait, self.backoff = self.backoff, min(self.backoff * 2, BACKOFF_MAX)
        return wait

    async def _follow(self, stub, address: str) -> None:
        answer = await stub.Connect(heimdall_pb2.ConnectRequest(peer_id=self.peer_id, name=self.config.name,
                                                                public_key=self.public_key), timeout=CONNECT_TIMEOUT)
        self.log.info("connected to %s", address)
        self.backoff = BACKOFF_FIRST
        await self._apply(answer.config, address)
        async for pushed in stub.Watch(heimdall_pb2.WatchRequest(peer_id=self.peer_id, public_key=self.public_key)):
            await self._apply(pushed, address)
        self.log.info("node %s ended the stream", address)

    async def _apply(self, pushed: heimdall_pb2.PeerConfig, address: str) -> None:
        try:
            desired = desired_from_config(pushed)
        except PushedConfigError as exc:
            self.log.error("node %s pushed a malformed configuration (rev %d), keeping the current one: %s",
                           address, pushed.revision, exc)
            return
        self.learned = [a for a in pushed.grpc_addresses if a]
        self.desired = desired
        await self._reconcile(f"rev {pushed.revision} from {address}")
        await self._install_names((tuple(pushed.dns_servers), pushed.dns_domain) if pushed.dns_servers else None)

    async def _install_names(self, names: tuple[tuple[str, ...], str] | None) -> None:
        """Make ``names`` (servers, domain) the host's way to the network's names; None: undo."""
        if self.resolver is None or names == self.names:
            return
        try:
            if names is None:
                await asyncio.to_thread(self.resolver.remove)
            else:
                await asyncio.to_thread(self.resolver.install, *names)
            self.names = names
        except (OSError, host_dns.HostDnsError) as exc:
            self.log.error("cannot %s the network's names on this host: %s", "remove" if names is None else "install",
                           exc)

    async def _reconcile(self, why: str) -> None:
        async with self.reconciling:  # a resync and a push must not apply two configs at once
            await self._reconcile_locked(why)

    async def _reconcile_locked(self, why: str) -> None:
        if self.desired is None:
            return
        try:
            changed = await asyncio.to_thread(apply_desired, self.backend, self.desired)
        except WireGuardError as exc:
            self.log.error("applying %s failed: %s", why, exc)
            return
        if changed:
            self.log.info("applied %s: %s", why, changed)
        self.status(f"{why}: {len(self.desired.peers)} nodes")

    async def _cut_off(self, reason: str) -> None:
        """Not (or no longer) authorized: drop every tunnel, keep the interface, keep asking."""
        if self.desired is not None and self.desired.peers:
            self.log.error("refused by the network (%s): dropping all tunnels", reason)
            self.desired = Desired(self.desired.addresses, frozenset(), {})
            await self._reconcile("deauthorization")
            await self._install_names(None)
        else:
            self.log.warning("not authorized yet (%s); ask an operator: hctl peers authorize %s",
                             reason, self.peer_id)
        self.status(f"waiting for authorization: hctl peers authorize {self.peer_id}")

    async def _resync(self) -> None:
        """Main progress loop: re-apply the last configuration now and then (repairs drift)."""
        elapsed = 0.0
        while True:
            await asyncio.sleep(1.0)
            self.progress()
            elapsed += 1.0
            if elapsed >= self.config.update_interval:
                elapsed = 0.0
                await self._reconcile("resync")

    async def shutdown(self) -> None:
        """The interface stays: tunnels survive a restart of this daemon. The host's DNS is put back."""
        await self._install_names(None)
