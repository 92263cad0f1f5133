"""Gateway cluster figures on simulated hosts with the real daemons.

join_s               a new node's daemons start -> it pings every other node
convergence_ms_p50/99  a route written on the master -> applied in the kernel of every node
change_loss_packets  packets lost by ping flows across all those changes
rss_mb_max           largest resident memory of any heimdall daemon on an idle node
idle_cpu_pct_max     largest CPU use of any heimdall daemon on an idle node
"""
from __future__ import annotations

import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from heimdall.lab import Lab
from heimdall.lab.cluster import LabNode, new_cluster_key, wait_until
from heimdall.lab.tunnels import PingFlow

CHANGES = 60  # each is a route added then removed: 2 revisions
SPACING = 0.25
IDLE_SECONDS = 30

WRITER = """
import asyncio, json, sys, time
import redis.asyncio as aioredis
from heimdall import cluster
from heimdall.state import State
key, via, count, spacing = sys.argv[1].encode(), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def main():
    r = aioredis.Redis(port=16379, password=cluster.redis_password(key), decode_responses=True)
    state, written = State(r), {}
    for i in range(count):
        for add in (True, False):
            net = f"172.20.{i}.0/24"
            before = time.time()
            await (state.create_route(net, via) if add else state.delete_route(net))
            written[await state.revision()] = before
            await asyncio.sleep(spacing)
    print(json.dumps(written))
asyncio.run(main())
"""


def figure(name: str, value: float, unit: str) -> None:
    print(f"{name}={value:.6g} {unit}", flush=True)


def progress(text: str) -> None:
    print(f"[bench] {text}", file=sys.stderr, flush=True)


def write_routes(master: LabNode, via: LabNode, changes: int = CHANGES, spacing: float = SPACING) -> dict[int, float]:
    """``changes`` routes via ``via`` created and deleted on ``master``'s Redis, ``spacing`` s apart; rev -> unix
    time each write began."""
    out = master.host.run([sys.executable, "-c", WRITER, master.cluster_key, via.node_id, str(changes),
                           str(spacing)], timeout=changes * 2 * spacing + 60).stdout
    return {int(k): v for k, v in json.loads(out).items()}


def applied_times(log: str, program: str = "heimdall-wg") -> dict[int, float]:
    """rev -> unix time ``program`` logged it applied (its log lines carry ms timestamps)."""
    found = {}
    for stamp, rev in re.findall(rf"^(\S+ \S+) INFO +{program}: applied rev (\d+)", log, re.M):
        found[int(rev)] = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return found


def latencies_ms(written: dict[int, float], applied: list[dict[int, float]]) -> list[float]:
    """For each revision written: ms until every host (one ``applied_times`` each) had applied it."""
    latencies = []
    for rev, at in written.items():
        ends = [a.get(rev) for a in applied]
        if None in ends:  # a later revision may have been applied in the same pass
            ends = [a.get(rev) or min((t for r, t in a.items() if r >= rev), default=None) for a in applied]
        if None in ends:
            raise RuntimeError(f"revision {rev} was never applied on some host")
        latencies.append((max(ends) - at) * 1000)
    return latencies


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def daemon_usage(nodes: list[LabNode], seconds: float) -> dict[str, tuple[float, float]]:
    """{daemon: (largest RSS in MB, largest CPU %)} over ``nodes`` while idle."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = {p.pid: daemon for n in nodes for daemon, p in n.procs.items() if p.poll() is None}

    def cpu(pid: int) -> int:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    before = {pid: cpu(pid) for pid in pids}
    time.sleep(seconds)
    usage: dict[str, tuple[float, float]] = {}
    for pid, daemon in pids.items():
        cpu_pct = (cpu(pid) - before[pid]) / tick / seconds * 100
        rss = int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text())[1]) / 1024
        old_rss, old_cpu = usage.get(daemon, (0.0, 0.0))
        usage[daemon] = (max(rss, old_rss), max(cpu_pct, old_cpu))
    return usage


def run() -> None:
    key = new_cluster_key()
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        logs = Path(tmp)
        nodes: list[LabNode] = []
        try:
            progress("bringing up 3 nodes")
            first = LabNode(lab.add_host("node1"), key, logs, settings={"debug": "false"}).start().wait_member()
            nodes.append(first)
            for name in ("node2", "node3"):
                nodes.append(LabNode(lab.add_host(name), key, logs, join=first,
                                     settings={"debug": "false"}).start())
            for node in nodes:
                node.wait_member()
            wait_until(lambda: all(a.pings(b.tunnel_address) for a in nodes for b in nodes if a is not b), 30,
                       "a full mesh")

            progress("idle usage")
            time.sleep(3)
            usage = daemon_usage(nodes, IDLE_SECONDS)

            progress("join time of a fourth node")
            began = time.monotonic()
            fourth = LabNode(lab.add_host("node4"), key, logs, join=first, settings={"debug": "false"}).start()
            nodes.append(fourth)
            wait_until(lambda: all(fourth.pings(n.tunnel_address, wait=0.2) for n in nodes[:3]), 60,
                       "the fourth node to ping all others", interval=0.01)
            join_s = time.monotonic() - began
            wait_until(lambda: all(n.pings(fourth.tunnel_address) for n in nodes[:3]), 30, "the mesh to include node4")

            progress(f"{CHANGES * 2} route changes while ping flows run")
            seconds = CHANGES * 2 * SPACING + 3
            flows = [PingFlow(nodes[0].host, nodes[1].tunnel_address, seconds, logs / "f01.log"),
                     PingFlow(nodes[1].host, nodes[2].tunnel_address, seconds, logs / "f12.log"),
                     PingFlow(nodes[3].host, nodes[0].tunnel_address, seconds, logs / "f30.log")]
            written = write_routes(first, nodes[1])
            lost = 0
            for flow in flows:
                sent, received = flow.wait()
                lost += sent - received
            time.sleep(1)
            # The node a route points to has nothing to change for it; every other node does.
            latencies = latencies_ms(written, [applied_times(n.log("heimdall-wg")) for n in nodes if n is not nodes[1]])
        finally:
            for node in nodes:
                node.stop()
    figure("join_s", join_s, "s")
    figure("convergence_ms_p50", statistics.median(latencies), "ms")
    figure("convergence_ms_p99", percentile(latencies, 99), "ms")
    figure("change_loss_packets", lost, "packets")
    figure("rss_mb_max", max(rss for rss, _ in usage.values()), "MB")
    figure("idle_cpu_pct_max", max(cpu for _, cpu in usage.values()), "%")
    for daemon, (rss, cpu) in sorted(usage.items()):
        figure(f"rss_mb_{daemon.removeprefix('heimdall-')}", rss, "MB")
        figure(f"idle_cpu_pct_{daemon.removeprefix('heimdall-')}", cpu, "%")
