"""The one reconciler of a WireGuard interface, shared by heimdall-wg (nodes) and heimdall-peer.

It reads the interface back, diffs it against the desired state and applies only
the difference: single peers, addresses, routes. It never recreates the
interface, so established tunnels are untouched by changes to other peers.
Blocking (netlink/UAPI): run it in a thread from an event loop.
"""
from __future__ import annotations

from heimdall.topology import Desired
from heimdall.wg.backend import WireGuardBackend
from heimdall.wg.model import plan_peers


def apply_desired(backend: WireGuardBackend, desired: Desired) -> str:
    """Make the interface match ``desired``; a summary of what changed ('' = nothing)."""
    plan = plan_peers(desired.peers, backend.device().peer_configs())
    if plan:
        backend.apply_peers(plan)
    addresses = set(desired.addresses)
    if addresses and backend.addresses() != addresses:
        backend.set_addresses(addresses)
    routes_before = backend.routes()
    if routes_before != desired.routes:
        backend.set_routes(set(desired.routes))
    return ", ".join(part for part in (
        f"peers {plan.summary()}" if plan else "",
        f"routes {len(routes_before)}->{len(desired.routes)}" if routes_before != desired.routes else "",
    ) if part)
