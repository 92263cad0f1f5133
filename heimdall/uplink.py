"""The node's uplink: the interface and address other nodes reach it on."""
from __future__ import annotations

from pyroute2 import IPRoute


class UplinkError(Exception):
    """The uplink interface or address cannot be determined; the message says what to set."""


def default_route_interface() -> str:
    """The interface of the IPv4 default route (main table)."""
    with IPRoute() as ipr:
        for route in ipr.get_routes(family=2, table=254):
            if route["dst_len"] == 0 and route.get_attr("RTA_OIF"):
                return ipr.get_links(route.get_attr("RTA_OIF"))[0].get_attr("IFLA_IFNAME")
    raise UplinkError("no IPv4 default route: set --node-interface or --endpoint-ip")


def interface_ipv4(ifname: str) -> str:
    """The first IPv4 address of ``ifname``."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            raise UplinkError(f"--node-interface {ifname}: no such interface")
        for addr in ipr.get_addr(family=2, index=found[0]):
            return addr.get_attr("IFA_ADDRESS")
    raise UplinkError(f"--node-interface {ifname} has no IPv4 address: set --endpoint-ip")


def resolve(node_interface: str, endpoint_ip: str) -> tuple[str, str]:
    """(uplink interface, endpoint IP) from the settings, deriving what is not set."""
    ifname = node_interface or default_route_interface()
    return ifname, endpoint_ip or interface_ipv4(ifname)
