"""Every Redis key and channel name Heimdall uses, in one place.

All keys share the ``heimdall:`` prefix so a shared Redis stays readable.
Collections are sets/hashes read whole (never ``KEYS``/``SCAN`` on a hot path).
"""
from __future__ import annotations

PREFIX = "heimdall"

REV = f"{PREFIX}:rev"  # integer, bumped by every write transaction
EVENTS = f"{PREFIX}:events"  # pub/sub channel: {"rev", "kind", "id"}

NODES = f"{PREFIX}:nodes"  # set of node ids
PEERS = f"{PREFIX}:peers"  # set of peer ids (peers that have connected)
AUTHORIZED = f"{PREFIX}:authorized"  # hash: peer id -> pinned public key ("" = not yet bound)
ROUTES = f"{PREFIX}:routes"  # hash: network -> node id
MASTER = f"{PREFIX}:master"  # hash: node_id, address, epoch
WITNESSES = f"{PREFIX}:witnesses"  # hash: witness id -> the address its sentinel announces (election voters)
SEEN = f"{PREFIX}:seen"  # hash: node id -> unix seconds of its last heartbeat (no event: not a change)

IPAM_NODE_SUBNETS = f"{PREFIX}:ipam:node-subnets"  # hash: subnet -> node id
IPAM_PEER_ADDRESSES = f"{PREFIX}:ipam:peer-addresses"  # hash: address -> peer id


def node(node_id: str) -> str:
    """Hash of one node's record."""
    return f"{PREFIX}:node:{node_id}"


def handshakes(node_id: str) -> str:
    """Hash: public key -> unix seconds of this node's latest WireGuard handshake with it (no event)."""
    return f"{PREFIX}:handshakes:{node_id}"


def peer(peer_id: str) -> str:
    """Hash of one peer's record."""
    return f"{PREFIX}:peer:{peer_id}"
