"""WireGuard domain objects and the pure diff between desired and actual state.

Keys are the standard base64 text form everywhere in Heimdall; backends convert
to whatever their transport needs (hex for the UAPI, raw for netlink).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field


class WireGuardError(Exception):
    """A WireGuard operation failed; the message names the interface and the step."""


def normalize_network(value: str) -> str:
    """Canonical text of an IP network ("10.1.2.3/16" -> "10.1.0.0/16")."""
    return str(ipaddress.ip_network(value, strict=False))


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """("192.0.2.1", 10100) from "192.0.2.1:10100", ("2001:db8::1", 10100) from "[2001:db8::1]:10100".

    Both backends take an IP literal (neither resolves names); IPv6 needs its brackets.
    """
    host, sep, port = endpoint.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if not sep or not port.isdigit():
        problem = "no port: it is not ip:port"
    else:
        try:
            address = ipaddress.ip_address(host[1:-1] if bracketed else host)
        except ValueError:
            problem = f"{host!r} is not an IP address"
        else:
            if bracketed != (address.version == 6):
                problem = "write IPv6 as [address]:port, IPv4 without brackets"
            elif not 0 < int(port) < 65536:
                problem = f"port {port} is not 1-65535"
            else:
                return str(address), int(port)
    raise ValueError(f"endpoint {endpoint!r} is not IPv4:port or [IPv6]:port ({problem})")


def join_endpoint(address: str, port: int) -> str:
    """The endpoint text of an address and port (IPv6 in brackets)."""
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


@dataclass(frozen=True)
class WgPeer:
    """Configuration of one WireGuard peer (what we set, not runtime counters)."""

    public_key: str
    allowed_ips: tuple[str, ...] = ()
    endpoint: str | None = None  # "host:port" / "[v6]:port"
    persistent_keepalive: int = 0

    def __post_init__(self) -> None:
        # Normalized, sorted allowed IPs make equality mean "same config".
        object.__setattr__(
            self,
            "allowed_ips",
            tuple(sorted({normalize_network(n) for n in self.allowed_ips})),
        )


@dataclass(frozen=True)
class WgPeerStatus:
    """A peer as read back from the interface, with its runtime counters."""

    peer: WgPeer
    last_handshake: float = 0.0  # unix seconds, 0 = never
    rx_bytes: int = 0
    tx_bytes: int = 0


@dataclass
class WgDevice:
    """What an interface currently holds."""

    name: str
    public_key: str | None
    listen_port: int
    peers: dict[str, WgPeerStatus] = field(default_factory=dict)

    def peer_configs(self) -> dict[str, WgPeer]:
        return {k: s.peer for k, s in self.peers.items()}


@dataclass(frozen=True)
class PeerPlan:
    """The minimal set of per-peer changes that turns actual into desired."""

    add: tuple[WgPeer, ...] = ()
    update: tuple[WgPeer, ...] = ()
    remove: tuple[str, ...] = ()  # public keys
    # What each updated peer holds now (by public key): a backend may change less than the whole peer.
    previous: dict[str, WgPeer] = field(default_factory=dict, compare=False)

    def __bool__(self) -> bool:
        return bool(self.add or self.update or self.remove)

    def summary(self) -> str:
        return f"+{len(self.add)} ~{len(self.update)} -{len(self.remove)}"


def allowed_ips_change(peer: WgPeer, current: WgPeer | None) -> tuple[tuple[str, ...], bool]:
    """(allowed IPs to send, whether they replace the peer's) to turn ``current`` into ``peer``.

    Both kernel WireGuard and wireguard-go apply a replace as "remove all the peer's
    allowed IPs, then add each": a packet to or from the peer routed in between is
    dropped (kernel: "Destination Host Unreachable" from our own tunnel address).
    So when the peer keeps all it has, only the new ones are added, without a replace,
    and its traffic never sees a gap. A peer that loses one still needs the replace:
    neither backend here can remove a single allowed IP.
    """
    if current is not None and set(current.allowed_ips) <= set(peer.allowed_ips):
        return tuple(n for n in peer.allowed_ips if n not in current.allowed_ips), False
    return peer.allowed_ips, True


def plan_peers(desired: dict[str, WgPeer], actual: dict[str, WgPeer]) -> PeerPlan:
    """Diff two {public_key: WgPeer} maps.

    An actual endpoint is only a difference when the desired peer names one:
    WireGuard learns roaming endpoints by itself and we must not fight it.
    """
    add, update, previous = [], [], {}
    for key, want in sorted(desired.items()):
        have = actual.get(key)
        if have is None:
            add.append(want)
            continue
        if (
            have.allowed_ips != want.allowed_ips
            or have.persistent_keepalive != want.persistent_keepalive
            or (want.endpoint is not None and have.endpoint != want.endpoint)
        ):
            update.append(want)
            previous[key] = have
    remove = tuple(sorted(k for k in actual if k not in desired))
    return PeerPlan(tuple(add), tuple(update), remove, previous)


@dataclass(frozen=True)
class SetPlan:
    """Items to add and remove so a set of strings matches the desired one."""

    add: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.add or self.remove)


def plan_set(desired: set[str], actual: set[str]) -> SetPlan:
    """Diff for addresses and routes (both kept as normalized CIDR strings)."""
    return SetPlan(tuple(sorted(desired - actual)), tuple(sorted(actual - desired)))
