"""heimdall-wg: the node's WireGuard interface, routes, forwarding and firewall."""
from __future__ import annotations

from heimdall.agents.wg import WgAgent
from heimdall.daemon import run_program


def main(argv: list[str] | None = None) -> int:
    return run_program("heimdall-wg", WgAgent, argv)
