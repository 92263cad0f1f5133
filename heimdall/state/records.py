"""Typed records of the network's state, and their Redis hash form.

Every record is a frozen dataclass; ``to_hash()`` gives the field map written
to Redis and ``from_hash()`` reads it back, tolerating fields it does not know
(a newer node may write more) and refusing records missing required ones.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


class RecordError(ValueError):
    """A record read from Redis is incomplete or malformed."""


@dataclass(frozen=True)
class Record:
    def to_hash(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_hash(cls: type[R], data: dict[str, str]) -> R:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                    raise RecordError(f"{cls.__name__}: missing field {f.name!r}")
                continue
            raw = data[f.name]
            try:
                values[f.name] = int(raw) if f.type in ("int", int) else raw
            except ValueError:
                raise RecordError(f"{cls.__name__}: field {f.name!r} is not an integer: {raw!r}") from None
        return cls(**values)


@dataclass(frozen=True)
class NodeRecord(Record):
    id: str
    name: str
    public_key: str
    endpoint: str  # WireGuard endpoint IP:PORT
    subnet: str  # the node's routed subnet
    grpc_address: str = ""
    joined_at: int = 0  # unix seconds; the election's "oldest sibling" order

    @property
    def tunnel_address(self) -> str:
        """The node's address on the WireGuard interface: its subnet's first address."""
        return str(ipaddress.ip_network(self.subnet)[1])


@dataclass(frozen=True)
class PeerRecord(Record):
    id: str
    name: str
    public_key: str
    address: str  # the peer's address in the peer network (no prefix length)
    connected_at: int = 0


@dataclass(frozen=True)
class MasterRecord(Record):
    node_id: str
    address: str  # the master's Redis, tunnel IP (port is the cluster's redis-port)
    epoch: int = 0


@dataclass(frozen=True)
class Snapshot:
    """The whole desired state at one revision (read atomically)."""

    rev: int = 0
    nodes: dict[str, NodeRecord] = field(default_factory=dict)
    peers: dict[str, PeerRecord] = field(default_factory=dict)
    authorized: dict[str, str] = field(default_factory=dict)  # peer id -> pinned key ("" = unbound)
    routes: dict[str, str] = field(default_factory=dict)  # network -> node id
    master: MasterRecord | None = None
    seen: dict[str, int] = field(default_factory=dict)  # node id -> last heartbeat
    handshakes: dict[str, dict[str, int]] = field(default_factory=dict)  # node id -> {public key: last handshake}

    def oldest_first(self) -> list[NodeRecord]:
        """Nodes by join time (ties by id): the "oldest sibling" order of elections."""
        return sorted(self.nodes.values(), key=lambda n: (n.joined_at, n.id))
