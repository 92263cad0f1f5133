"""The WireGuard backend interface.

Two implementations: kernel WireGuard over netlink (``kernel.py``) and the
userspace ``wireguard-go`` over its UAPI socket (``userspace.py``). Both share
addresses, routes and link state, which are plain rtnetlink (``links.py``).
Every call is synchronous and short; daemons run them off their event loop.
"""
from __future__ import annotations

import abc

from heimdall.wg import links
from heimdall.wg.model import PeerPlan, WgDevice


class WireGuardBackend(abc.ABC):
    """One WireGuard interface on this host."""

    kind: str = "abstract"

    def __init__(self, ifname: str) -> None:
        if not 0 < len(ifname) <= 15 or "/" in ifname or ifname.strip() != ifname:
            raise ValueError(f"invalid interface name {ifname!r} (1-15 characters, no '/' or spaces)")
        self.ifname = ifname

    # -- WireGuard proper (implementation specific) -----------------------------
    @abc.abstractmethod
    def ensure_interface(self) -> int:
        """Create the interface if missing (adopting an existing one), bring it up; return ifindex."""

    @abc.abstractmethod
    def configure(self, private_key: str, listen_port: int) -> None:
        """Set the private key and listen port, leaving peers untouched."""

    @abc.abstractmethod
    def device(self) -> WgDevice:
        """Read the interface's current key, port and peers."""

    @abc.abstractmethod
    def apply_peers(self, plan: PeerPlan) -> None:
        """Apply a per-peer diff. Never recreates the interface."""

    @abc.abstractmethod
    def delete_interface(self) -> None:
        """Remove the interface (and for userspace, its process). Idempotent."""

    # -- rtnetlink, shared --------------------------------------------------------
    def ifindex(self) -> int | None:
        return links.ifindex(self.ifname)

    def addresses(self) -> set[str]:
        return links.addresses(self.ifname)

    def set_addresses(self, desired: set[str]) -> None:
        links.set_addresses(self.ifname, desired)

    def routes(self) -> set[str]:
        return links.routes(self.ifname)

    def set_routes(self, desired: set[str]) -> None:
        links.set_routes(self.ifname, desired)
