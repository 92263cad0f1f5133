"""heimdall-dns: the network's names on the node's tunnel address; other names forwarded upstream."""
from __future__ import annotations

from heimdall.agents.dns import DnsAgent
from heimdall.daemon import run_program


def main(argv: list[str] | None = None) -> int:
    return run_program("heimdall-dns", DnsAgent, argv)
