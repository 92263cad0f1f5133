"""What each host's WireGuard interface should hold, derived from a state snapshot.

Pure functions: the reconcilers of heimdall-wg (nodes) and heimdall-api (which
pushes peers their config) diff these against the kernel. Records that do not
make sense (a bad subnet or key written by a broken client) are skipped with a
warning rather than breaking everyone's tunnels.
"""
from __future__ import annotations

import ipaddress
import logging
from collections import defaultdict
from dataclasses import dataclass, field

from heimdall.state.records import NodeRecord, PeerRecord, Snapshot
from heimdall.wg import keys
from heimdall.wg.model import WgPeer

log = logging.getLogger(__name__)

PEER_KEEPALIVE = 25  # peers are often behind NAT: keep their mapping open


@dataclass(frozen=True)
class Desired:
    """One interface's desired addresses, kernel routes and WireGuard peers."""

    addresses: frozenset[str] = frozenset()
    routes: frozenset[str] = frozenset()
    peers: dict[str, WgPeer] = field(default_factory=dict)  # by public key


@dataclass(frozen=True)
class PeerView:
    """Everything a peer host needs (what the API's PeerConfig carries)."""

    address: str
    peers: dict[str, WgPeer]
    dns_servers: tuple[str, ...]
    grpc_addresses: tuple[str, ...]


def usable(record: NodeRecord | PeerRecord) -> bool:
    try:
        keys.validate_key(record.public_key)
        if isinstance(record, NodeRecord):
            ipaddress.ip_network(record.subnet)
        else:
            ipaddress.IPv4Address(record.address)
    except ValueError as exc:
        log.warning("ignoring %s %s: %s", type(record).__name__, record.id, exc)
        return False
    return True


def _inside(network, other) -> bool:
    """``network`` lies in ``other`` (never for different IP versions, where subnet_of raises)."""
    return network.version == other.version and network.subnet_of(other)


def _routes_by_node(snapshot: Snapshot) -> dict[str, list[str]]:
    by_node: dict[str, list[str]] = defaultdict(list)
    for network, node_id in snapshot.routes.items():
        try:
            by_node[node_id].append(str(ipaddress.ip_network(network)))
        except ValueError:
            log.warning("ignoring malformed route %r", network)
    return by_node


def _node_entry(node: NodeRecord, routes: list[str], keepalive: int = 0) -> WgPeer:
    return WgPeer(node.public_key, (node.subnet, *routes), endpoint=node.endpoint or None,
                  persistent_keepalive=keepalive)


def node_desired(snapshot: Snapshot, node_id: str, own_public_key: str, peer_network: str) -> Desired:
    """A node's interface: a peer entry per other node (its subnet and routes) and per connected peer."""
    me = snapshot.nodes.get(node_id)
    routes = _routes_by_node(snapshot)
    peers: dict[str, WgPeer] = {}
    for node in snapshot.oldest_first():
        if node.id != node_id and node.public_key != own_public_key and usable(node):
            peers[node.public_key] = _node_entry(node, routes[node.id])
    for peer in snapshot.peers.values():
        if peer.id in snapshot.authorized and peer.public_key not in peers and usable(peer):
            peers[peer.public_key] = WgPeer(peer.public_key, (f"{peer.address}/32",))
    peer_net = ipaddress.ip_network(peer_network)
    kernel_routes = {net for entry in peers.values() for net in entry.allowed_ips
                     if not _inside(ipaddress.ip_network(net), peer_net)}
    kernel_routes.add(str(ipaddress.ip_network(peer_network)))
    addresses = frozenset({f"{me.tunnel_address}/32"}) if me is not None else frozenset()
    return Desired(addresses, frozenset(kernel_routes), peers)


def peer_hub(snapshot: Snapshot) -> str | None:
    """The node all peer-to-peer traffic goes through: the master's, else the oldest usable node.

    A peer's WireGuard accepts a source address from one entry only, so the
    sender's and the receiver's entries for the peer network must name the same
    node: one hub for every peer, whichever node each one's control stream is on.
    """
    candidates = [n.id for n in snapshot.oldest_first() if usable(n)]
    if snapshot.master is not None and snapshot.master.node_id in candidates:
        return snapshot.master.node_id
    return candidates[0] if candidates else None


def peer_view(snapshot: Snapshot, peer_id: str, peer_network: str, allow_peer_to_peer: bool) -> PeerView | None:
    """A peer's interface, or None if the peer is not (or no longer) connected and authorized.

    With peer-to-peer traffic on, the whole peer network goes to the hub node
    (:func:`peer_hub`; WireGuard routes each address to exactly one entry).
    """
    peer = snapshot.peers.get(peer_id)
    if peer is None or peer_id not in snapshot.authorized or not usable(peer):
        return None
    routes = _routes_by_node(snapshot)
    hub = peer_hub(snapshot) if allow_peer_to_peer else None
    entries: dict[str, WgPeer] = {}
    nodes = [n for n in snapshot.oldest_first() if usable(n)]
    for node in nodes:
        extra = [str(ipaddress.ip_network(peer_network))] if node.id == hub else []
        entries[node.public_key] = _node_entry(node, [*routes[node.id], *extra], PEER_KEEPALIVE)
    return PeerView(
        address=f"{peer.address}/32",
        peers=entries,
        dns_servers=tuple(n.tunnel_address for n in nodes),
        grpc_addresses=tuple(n.grpc_address for n in nodes if n.grpc_address),
    )
