"""heimdall-store: the node's own redis-server, a replica of the master."""
from __future__ import annotations

from heimdall.agents.store import StoreAgent
from heimdall.daemon import run_program


def main(argv: list[str] | None = None) -> int:
    return run_program("heimdall-store", StoreAgent, argv)
