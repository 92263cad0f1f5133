"""A live WireGuard demo in simulated hosts (``make demo``; needs root).

Two hosts get a tunnel with the backend this kernel supports; while one pings the
other every 50 ms, a third host is added as a peer, reaches the first through the
tunnel, and is removed again. Prints the packets lost (expected: 0) and how long
each peer change took, then removes everything it created. Exit 0 on success.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from heimdall.lab.hosts import Lab
from heimdall.lab.tunnels import IFNAME, LiveChange, TunnelHost, live_peer_change
from heimdall.wg import BACKENDS, kernel_wireguard_available


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heimdall.lab.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="WireGuard backend (default: auto)")
    args = parser.parse_args(argv)
    print("Heimdall demo: simulated hosts, a WireGuard tunnel, a peer added and removed live\n")
    try:
        with Lab() as lab, tempfile.TemporaryDirectory(prefix="heimdall-demo-") as tmp:
            prefix = lab.prefix
            change = run(lab, args.backend, Path(tmp))
    except KeyboardInterrupt:
        print("\ninterrupted; everything created was removed")
        return 130
    except Exception as exc:  # the operator gets one line, not a traceback
        print(f"\nFAILED: {exc}", file=sys.stderr)
        return 1
    leftovers = [ns for ns in _netns_list() if ns.startswith(prefix + "-")]
    if leftovers:
        print(f"FAILED: namespaces left behind: {', '.join(leftovers)}", file=sys.stderr)
        return 1
    print(f"{'cleanup':12}namespaces and processes removed")
    if change.lost or len(change.ifindexes) != 1:
        print("\nFAILED: the live change lost packets or recreated the interface", file=sys.stderr)
        return 1
    print("\nOK")
    return 0


def run(lab: Lab, backend: str, tmp: Path) -> LiveChange:
    """The demo proper, printing as it goes."""
    a, b, c = (TunnelHost(lab.add_host(name), backend) for name in ("alpha", "beta", "gamma"))
    step("hosts", ", ".join(f"{t.host.name} {t.host.underlay_ip}" for t in (a, b, c)),
         f"(network + mount namespaces {lab.prefix}-*, one bridge)")

    kind = a.up()["kind"]
    b.up()
    why = "" if kind == "kernel" or kernel_wireguard_available() else " (this kernel has no WireGuard module)"
    step("backend", f"{kind}{': wireguard-go' if kind == 'userspace' else ''}{why}")
    a.set_peers([b])
    b.set_peers([a])
    step("tunnel", f"alpha {a.tunnel_ip} <-> beta {b.tunnel_ip} on {IFNAME}", f"ping: {a.ping(b)}")

    step("live change", "alpha pings beta every 50 ms; meanwhile gamma becomes alpha's peer,",
         "pings alpha through the tunnel, and is removed again")
    change = live_peer_change(a, b, c, tmp / "ping.log")
    if not change.covered:
        raise RuntimeError("the ping flow ended before the change did; nothing was measured")
    step("", f"add {_ms(change.add_seconds)}, remove {_ms(change.remove_seconds)} (one apply_peers call each)")
    same = "unchanged" if len(change.ifindexes) == 1 else f"CHANGED {sorted(change.ifindexes)}"
    step("", f"alpha's interface index {same}")
    step("result", f"{change.sent} echoes sent, {change.received} answered, {change.lost} lost")
    return change


def step(label: str, *lines: str) -> None:
    for i, line in enumerate(lines):
        print(f"{label if i == 0 else '':12}{line}", flush=True)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def _netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
