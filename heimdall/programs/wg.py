"""heimdall-wg (not built yet: parses its configuration, then says so and exits 2)."""
from __future__ import annotations

from heimdall.daemon import run_program


def main(argv: list[str] | None = None) -> int:
    return run_program("heimdall-wg", None, argv)
