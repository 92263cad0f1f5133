"""heimdall-elector: keeps the master record (failover comes with a quorum engine)."""
from __future__ import annotations

from heimdall.agents.elector import ElectorAgent
from heimdall.daemon import run_program


def main(argv: list[str] | None = None) -> int:
    return run_program("heimdall-elector", ElectorAgent, argv)
