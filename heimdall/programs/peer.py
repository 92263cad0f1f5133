"""heimdall-peer: an access-only peer's WireGuard interface, pushed from a node's API."""
from __future__ import annotations

from heimdall.agents.peer import PeerAgent
from heimdall.daemon import run_program


def main(argv: list[str] | None = None) -> int:
    return run_program("heimdall-peer", PeerAgent, argv)
