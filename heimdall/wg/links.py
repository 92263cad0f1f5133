"""Link, address and route work over rtnetlink (pyroute2 IPRoute).

Each function opens a short-lived IPRoute in the caller's network namespace.
Addresses are "ip/prefix" strings, routes are normalized network strings; all
routes we manage are scoped to our interface, so ``routes()`` only reports
those and never touches anyone else's.
"""
from __future__ import annotations

import ipaddress

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from heimdall.wg.model import WireGuardError, normalize_network, plan_set

# Routes we install carry this protocol number so they are recognisable as ours
# (`ip route show proto 77`); kernel-made link routes (proto kernel) are left alone.
RTPROT_HEIMDALL = 77


def normalize_address(value: str) -> str:
    return str(ipaddress.ip_interface(value))


def ifindex(ifname: str) -> int | None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
    return found[0] if found else None


def _require_index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise WireGuardError(f"{ifname}: interface does not exist")
    return found[0]


def link_kind(ifname: str) -> str | None:
    """The rtnetlink kind of a link ("wireguard", "tun", ...), None if absent."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return None
        link = ipr.get_links(found[0])[0]
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info else None


def set_up(ifname: str, mtu: int | None = None) -> None:
    with IPRoute() as ipr:
        idx = _require_index(ipr, ifname)
        kwargs = {"state": "up"}
        if mtu:
            kwargs["mtu"] = mtu
        ipr.link("set", index=idx, **kwargs)


def addresses(ifname: str) -> set[str]:
    with IPRoute() as ipr:
        idx = _require_index(ipr, ifname)
        return {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}" for a in ipr.get_addr(index=idx)
        }


def set_addresses(ifname: str, desired: set[str]) -> None:
    plan = plan_set({normalize_address(a) for a in desired}, addresses(ifname))
    with IPRoute() as ipr:
        idx = _require_index(ipr, ifname)
        for addr in plan.remove:
            ip, prefix = addr.split("/")
            ipr.addr("del", index=idx, address=ip, prefixlen=int(prefix))
        for addr in plan.add:
            ip, prefix = addr.split("/")
            try:
                ipr.addr("add", index=idx, address=ip, prefixlen=int(prefix))
            except NetlinkError as exc:
                raise WireGuardError(f"{ifname}: cannot add address {addr}: {exc}") from exc


def _route_dst(route) -> str:
    dst = route.get_attr("RTA_DST")
    family_len = 32 if route["family"] == 2 else 128
    if dst is None:
        dst = "0.0.0.0" if family_len == 32 else "::"
    return normalize_network(f"{dst}/{route['dst_len']}")


def routes(ifname: str) -> set[str]:
    """Destinations of the routes we installed on ``ifname`` (main table)."""
    with IPRoute() as ipr:
        idx = _require_index(ipr, ifname)
        found = set()
        for family in (2, 10):
            for r in ipr.get_routes(family=family, oif=idx, table=254):
                if r["proto"] == RTPROT_HEIMDALL:
                    found.add(_route_dst(r))
        return found


def set_routes(ifname: str, desired: set[str]) -> None:
    plan = plan_set({normalize_network(n) for n in desired}, routes(ifname))
    with IPRoute() as ipr:
        idx = _require_index(ipr, ifname)
        for dst in plan.remove:
            try:
                ipr.route("del", dst=dst, oif=idx, proto=RTPROT_HEIMDALL)
            except NetlinkError as exc:
                if exc.code != 3:  # ESRCH: already gone
                    raise WireGuardError(f"{ifname}: cannot delete route {dst}: {exc}") from exc
        for dst in plan.add:
            try:
                # "replace" so a stale route to the same destination is taken over, not an error.
                ipr.route("replace", dst=dst, oif=idx, proto=RTPROT_HEIMDALL)
            except NetlinkError as exc:
                raise WireGuardError(f"{ifname}: cannot add route {dst}: {exc}") from exc
