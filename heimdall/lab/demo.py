"""A live Heimdall network on this machine (``make demo``; needs root).

Four simulated hosts (network + mount namespaces on one bridge) run the real
daemons: gw1 bootstraps a cluster, gw2 and gw3 join it through gw1's API, and a
laptop joins as an access-only peer once an operator authorizes it with hctl.
While pings flow every 50 ms, a route is published and withdrawn live; then the
master gw1 is killed (every process of the host, SIGKILL), the others elect a new
master and a route published afterwards reaches everyone; the laptop pings gw3
by name, the dead gw1 is removed for good, then the laptop is deauthorized. Prints what happens and how long it took, checks that no
packet was lost, and removes everything it created. Exit 0 on success.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from heimdall.lab.cluster import LabNode, LabPeer, elections_ready, new_cluster_key, settled_on_one_master, wait_until
from heimdall.lab.hosts import Lab
from heimdall.lab.tunnels import PingFlow
from heimdall.wg import BACKENDS

ROUTE = "192.168.200.0/24"
ROUTE_AFTER_FAILOVER = "192.168.201.0/24"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heimdall.lab.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="WireGuard backend (default: auto)")
    parser.add_argument("--keep-logs", metavar="DIR", type=Path, help="write the daemons' logs to DIR")
    args = parser.parse_args(argv)
    print("Heimdall demo: a gateway cluster and a peer on simulated hosts, changed live\n")
    logs = args.keep_logs or Path(tempfile.mkdtemp(prefix="heimdall-demo-"))
    logs.mkdir(parents=True, exist_ok=True)
    try:
        with Lab() as lab:
            prefix = lab.prefix
            lost = run(lab, args.backend, logs)
    except KeyboardInterrupt:
        print("\ninterrupted; everything created was removed")
        return 130
    except Exception as exc:  # the operator gets one line (and where the logs are), not a traceback
        print(f"\nFAILED: {exc}\n(daemon logs in {logs})", file=sys.stderr)
        return 1
    leftovers = [ns for ns in _netns_list() if ns.startswith(prefix + "-")]
    if leftovers:
        print(f"FAILED: namespaces left behind: {', '.join(leftovers)}", file=sys.stderr)
        return 1
    step("cleanup", "daemons stopped, namespaces removed", f"(logs in {logs})")
    if lost:
        print(f"\nFAILED: {lost} packets lost during live changes", file=sys.stderr)
        return 1
    print("\nOK")
    return 0


def run(lab: Lab, backend: str, logs: Path) -> int:
    """The demo proper, printing as it goes; returns the packets lost during live changes."""
    key = new_cluster_key()
    settings = {"debug": "false", "wireguard-backend": backend}
    hosts = [lab.add_host(name) for name in ("gw1", "gw2", "gw3", "laptop")]
    step("hosts", ", ".join(f"{h.name} {h.underlay_ip}" for h in hosts), f"(namespaces {lab.prefix}-*)")

    began = time.monotonic()
    gw1 = LabNode(hosts[0], key, logs, settings=settings).start().wait_member()
    step("bootstrap", f"gw1: new cluster, subnet {gw1.membership()['subnet']}, master "
                      f"({time.monotonic() - began:.1f} s)")
    began = time.monotonic()
    nodes = [gw1] + [LabNode(h, key, logs, join=gw1, settings=settings).start() for h in hosts[1:3]]
    for node in nodes:
        node.wait_member()
    wait_until(lambda: all(a.pings(b.tunnel_address) for a in nodes for b in nodes if a is not b), 30,
               "a full mesh")
    step("join", f"gw2, gw3 joined through gw1's API; full mesh in {time.monotonic() - began:.1f} s")
    for node in nodes:
        step("", f"{node.name}  subnet {node.membership()['subnet']:<15} tunnel {node.tunnel_address}")
    for node in nodes:
        node.wait_serving()

    laptop = LabPeer(hosts[3], "laptop", nodes[:2], logs, settings={"debug": "false"}).start()
    wait_until(lambda: "not authorized" in laptop.log(), 15, "the unauthorized peer to be refused")
    step("peer", "laptop runs heimdall-peer: refused, not authorized yet")
    began = time.monotonic()
    hctl(gw1, "peers", "authorize", "laptop")
    wait_until(lambda: laptop.reaches(nodes), 30, "the laptop to reach every node")
    step("", f"hctl peers authorize laptop -> laptop {laptop.address} reaches gw1-gw3 in "
             f"{time.monotonic() - began:.1f} s")

    step("live", "gw1 pings gw2 and the laptop pings gw3 every 50 ms while:")
    flows = [PingFlow(gw1.host, nodes[1].tunnel_address, 6, logs / "flow-gw1-gw2.log"),
             PingFlow(laptop.host, nodes[2].tunnel_address, 6, logs / "flow-laptop-gw3.log")]
    began = time.monotonic()
    hctl(gw1, "routes", "create", "--node-id", nodes[1].node_id, "--network", ROUTE)
    wait_until(lambda: ROUTE in " ".join(sum(gw1.wg_peers().values(), [])) and
               ROUTE in " ".join(sum(laptop.wg_peers().values(), [])), 10, "the route on every WireGuard config")
    step("", f"  hctl routes create {ROUTE} via gw2 -> on gw1, gw3 and the laptop in "
             f"{(time.monotonic() - began) * 1000:.0f} ms")
    time.sleep(1)
    hctl(gw1, "routes", "delete", ROUTE)
    step("", f"  hctl routes delete {ROUTE}")
    lost = 0
    for flow in flows:
        sent, received = flow.wait()
        lost += sent - received
    step("", f"  {sum(1 for _ in flows)} flows: {lost} packets lost, no tunnel restarted")

    lost += failover(nodes, laptop, logs)
    survivor = nodes[1]
    wait_until(lambda: laptop.pings("gw3"), 15, "the laptop to resolve and reach gw3 by name")
    step("names", "laptop: ping gw3 -> answered (heimdall-dns on every node, the laptop's resolver points there)")
    began = time.monotonic()
    hctl(survivor, "nodes", "remove", "gw1")
    wait_until(lambda: all(nodes[0].public_key not in host.wg_peers() for host in (*nodes[1:], laptop)), 15,
               "gw1 to leave every WireGuard interface")
    step("remove", f"gw1 is gone for good: hctl nodes remove gw1 -> off every host, its subnet released, in "
                   f"{(time.monotonic() - began) * 1000:.0f} ms")
    step("status", *hctl(survivor, "status").splitlines())
    began = time.monotonic()
    hctl(survivor, "peers", "deauthorize", "laptop")
    wait_until(lambda: not any(laptop.pings(n.tunnel_address, wait=0.2) for n in nodes[1:]), 10,
               "the laptop to be cut off", interval=0.01)
    step("revoke", f"hctl peers deauthorize laptop -> cut off from every node in "
                   f"{(time.monotonic() - began) * 1000:.0f} ms")
    laptop.stop()
    for node in reversed(nodes):
        node.stop()
    return lost


def failover(nodes: list[LabNode], laptop: LabPeer, logs: Path) -> int:
    """The master gw1 dies; gw2 and gw3 elect a master; a change made afterwards reaches everyone.
    Returns the packets lost meanwhile."""
    wait_until(lambda: elections_ready(nodes), 60, "every node's sentinel to know every other node")
    gw1, survivors = nodes[0], nodes[1:]
    step("failover", "gw2 and the laptop ping gw3 every 50 ms while every process of gw1 (the master) is killed:")
    flows = [PingFlow(survivors[0].host, survivors[1].tunnel_address, 12, logs / "flow-gw2-gw3-failover.log"),
             PingFlow(laptop.host, survivors[1].tunnel_address, 12, logs / "flow-laptop-gw3-failover.log")]
    began = time.monotonic()
    gw1.host.crash()
    master = wait_until(lambda: settled_on_one_master(survivors), 30, "a new master", interval=0.02)
    epoch = master.redis("HGET", "heimdall:master", "epoch").strip()
    step("", f"  {master.name} elected master in {time.monotonic() - began:.1f} s (epoch {epoch}); "
             f"the other replicates it")
    other = next(n for n in survivors if n is not master)
    began = time.monotonic()
    hctl(other, "routes", "create", "--node-id", other.node_id, "--network", ROUTE_AFTER_FAILOVER)
    wait_until(lambda: ROUTE_AFTER_FAILOVER in " ".join(sum(master.wg_peers().values(), [])) and
               ROUTE_AFTER_FAILOVER in " ".join(sum(laptop.wg_peers().values(), [])), 10,
               "the route on every WireGuard config")
    step("", f"  afterwards: hctl routes create {ROUTE_AFTER_FAILOVER} via {other.name} -> on {master.name} "
             f"and the laptop in {(time.monotonic() - began) * 1000:.0f} ms")
    lost = 0
    for flow in flows:
        sent, received = flow.wait()
        lost += sent - received
    step("", f"  {len(flows)} flows: {lost} packets lost")
    return lost


def hctl(node: LabNode, *args: str) -> str:
    result = node.hctl(*args)
    if result.returncode != 0:
        raise RuntimeError(f"hctl {' '.join(args)} on {node.name}: {result.stderr.strip()}")
    return result.stdout


def step(label: str, *lines: str) -> None:
    for i, line in enumerate(lines):
        print(f"{label if i == 0 else '':10}{line}", flush=True)


def _netns_list() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


if __name__ == "__main__":
    sys.exit(main())
