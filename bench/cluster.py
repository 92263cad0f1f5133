"""Gateway cluster figures on simulated hosts with the real daemons.

join_s               a new node's daemons start -> it pings every other node
convergence_ms_p50/99  a route written on the master -> applied in the kernel of every node
change_loss_packets  packets lost by ping flows across all those changes (the flows outlast the writer: checked)

Measured on idle nodes after that load, over every process of each node (all of its host's network
namespace: the heimdall daemons, redis-server, the elector's sentinel, wireguard-go):
host_pss_mb            memory of one node: the sum of its processes' PSS (shared pages split), the largest node
host_idle_cpu_pct      CPU use of one node: the sum over its processes, the largest node
rss_peak_mb_max        the largest peak resident memory (VmHWM) of any one process
pss_mb_max / idle_cpu_pct_max  the largest PSS / CPU use of any one process
rss_peak_mb_<program>, pss_mb_<program>, idle_cpu_pct_<program>  the same per program (largest over the nodes)
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
from typing import Callable, NamedTuple

from heimdall.lab import Lab
from heimdall.lab.cluster import LabNode, new_cluster_key, wait_until
from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow, flow_counts

CHANGES = int(os.environ.get("HEIMDALL_BENCH_CHANGES", "60"))  # each is a route added then removed: 2 revisions
SPACING = 0.25
IDLE_SECONDS = float(os.environ.get("HEIMDALL_BENCH_IDLE_SECONDS", "30"))

WRITER = """
import asyncio, json, sys, time
import redis.asyncio as aioredis
from heimdall import cluster
from heimdall.state import State
key, via, count, spacing = sys.argv[1].encode(), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
async def main():
    r = aioredis.Redis(port=16379, password=cluster.redis_password(key), decode_responses=True)
    state, written = State(r), {}
    # Pairs of add and delete, then one last add: a host that took an add and its delete in one pass logs
    # nothing for them (they are timed by the next revision it logs), and the last add is one it must log.
    changes = [(f"172.20.{i}.0/24", add) for i in range(count) for add in (True, False)] + [("172.21.0.0/24", True)]
    for net, add in changes:
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


def wait_applied(logs: Callable[[], list[str]], rev: int, program: str = "heimdall-wg") -> list[dict[int, float]]:
    """``applied_times`` of each of ``logs()`` once every one shows revision ``rev``, or a later one, applied."""
    def everywhere() -> list[dict[int, float]] | None:
        applied = [applied_times(log, program) for log in logs()]
        return applied if all(max(a, default=0) >= rev for a in applied) else None
    return wait_until(everywhere, 30, f"revision {rev} to be applied by every {program}")


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


def program_of(pid: int) -> str:
    """A process's program: the name of what it runs (a console script's, not the interpreter's, and
    not comm's 15 characters), the elector's sentinel told apart from a plain redis-server."""
    argv = [Path(os.fsdecode(arg)).name for arg in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if arg]
    name = next((arg for arg in argv if arg.startswith("heimdall-")), argv[0] if argv else "?")
    if name == "redis-server" and "--sentinel" in argv:
        return "redis-sentinel"
    return name


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def memory_mb(pid: int) -> tuple[float, float]:
    """(peak resident memory VmHWM, proportional set size PSS) of a process, in MB."""
    peak = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    pss = re.search(r"^Pss:\s+(\d+) kB", Path(f"/proc/{pid}/smaps_rollup").read_text(), re.M)
    return int(peak[1]) / 1024, int(pss[1]) / 1024


class Usage(NamedTuple):
    """One process of a node, idle after the load."""

    program: str
    rss_peak_mb: float
    pss_mb: float
    cpu_pct: float


def node_usage(nodes: list[LabNode], seconds: float) -> list[list[Usage]]:
    """For each node, the Usage of every process on its host, CPU averaged over ``seconds``
    (a process that came or went meanwhile is left out)."""
    tick = os.sysconf("SC_CLK_TCK")
    before = [living(node.host.pids(), cpu_ticks) for node in nodes]
    time.sleep(seconds)
    return [list(living(ticks, lambda pid: Usage(program_of(pid), *memory_mb(pid),
                                                 (cpu_ticks(pid) - ticks[pid]) / tick / seconds * 100)).values())
            for ticks in before]


def living(pids, read) -> dict:
    """{pid: read(pid)} for those of ``pids`` still running (reading /proc of one that exited fails)."""
    found = {}
    for pid in pids:
        try:
            found[pid] = read(pid)
        except (OSError, TypeError):  # TypeError: a zombie's /proc status lacks the fields
            continue
    return found


def usage_figures(usage: list[list[Usage]]) -> None:
    """Print the per-node sums, the largest single process and per-program figures of ``node_usage``."""
    processes = [p for node in usage for p in node]
    figure("host_pss_mb", max(sum(p.pss_mb for p in node) for node in usage), "MB")
    figure("host_idle_cpu_pct", max(sum(p.cpu_pct for p in node) for node in usage), "%")
    figure("rss_peak_mb_max", max(p.rss_peak_mb for p in processes), "MB")
    figure("pss_mb_max", max(p.pss_mb for p in processes), "MB")
    figure("idle_cpu_pct_max", max(p.cpu_pct for p in processes), "%")
    for program in sorted({p.program for p in processes}):
        mine = [p for p in processes if p.program == program]
        short = program.removeprefix("heimdall-")
        figure(f"rss_peak_mb_{short}", max(p.rss_peak_mb for p in mine), "MB")
        figure(f"pss_mb_{short}", max(p.pss_mb for p in mine), "MB")
        figure(f"idle_cpu_pct_{short}", max(p.cpu_pct for p in mine), "%")


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

            progress("join time of a fourth node")
            began = time.monotonic()
            fourth = LabNode(lab.add_host("node4"), key, logs, join=first, settings={"debug": "false"}).start()
            nodes.append(fourth)
            wait_until(lambda: all(fourth.pings(n.tunnel_address, wait=0.2) for n in nodes[:3]), 60,
                       "the fourth node to ping all others", interval=0.01)
            join_s = time.monotonic() - began
            wait_until(lambda: all(n.pings(fourth.tunnel_address) for n in nodes[:3]), 30, "the mesh to include node4")

            progress(f"{CHANGES * 2} route changes while ping flows run")
            seconds = CHANGES * 2 * SPACING + LIVE_FLOW_SECONDS  # stopped once the writer is done
            flows = [PingFlow(nodes[i].host, nodes[j].tunnel_address, seconds, logs / f"f{i}{j}.log").wait_answered()
                     for i, j in ((0, 1), (1, 2), (3, 0))]
            written = write_routes(first, nodes[1])
            counts = flow_counts(flows, f"{CHANGES * 2} route changes")  # raises if a flow ended before the writer
            lost = sum(sent - received for sent, received in counts.values())
            # The node a route points to has nothing to change for it; every other node does.
            latencies = latencies_ms(written, wait_applied(
                lambda: [n.log("heimdall-wg") for n in nodes if n is not nodes[1]], max(written)))

            progress(f"usage of every process of every node, idle after the load ({IDLE_SECONDS:.0f} s)")
            time.sleep(3)
            usage = node_usage(nodes, IDLE_SECONDS)
        finally:
            for node in nodes:
                node.stop()
    figure("join_s", join_s, "s")
    figure("convergence_ms_p50", statistics.median(latencies), "ms")
    figure("convergence_ms_p99", percentile(latencies, 99), "ms")
    figure("change_loss_packets", lost, "packets")
    usage_figures(usage)
