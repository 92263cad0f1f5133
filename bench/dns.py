"""heimdall-dns figures on simulated hosts with the real daemons, side by side with Debian's dnsmasq.

Setup: two nodes (node1 bootstraps, node2 joins), an access-only peer running
heimdall-peer, a load client host and a resolver host for dnsmasq. Written
through the state layer (heimdall.state.State on the master's Redis, the pools
the API uses): 50 node records (valid WireGuard keys, endpoints in TEST-NET-2
that never answer, no gRPC address) and 1,000 peers (authorize_peer, then
connect_peer). The query mix is every one of those 1,050 names, bare and as
NAME.heimdall, plus unknown names in our domain making ~10% of the lines
(NXDOMAIN), all type A, in a shuffled file; dnsperf cycles through it.

The client reaches node1's tunnel address over the lab segment (a host route
via node1's eth0), not through WireGuard: both servers are one veth/bridge hop
away from the same client, so the path does not favour either. dnsmasq runs on
its own host, bound to its address: `--no-resolv --no-hosts --addn-hosts FILE`
(each address with NAME and NAME.heimdall) `--domain=heimdall
--local=/heimdall/ --cache-size=10000`. Before measuring, one pass over the
file must give every name NOERROR and only the unknown ones NXDOMAIN, on both
servers.

dns_qps               heimdall-dns on node1, maximum throughput: `dnsperf -l SECONDS/2 -q 100 -t 1` (100
                      queries outstanding, UDP), its "Queries per second" (completed queries / run time); the
                      mean of two runs, in the order heimdall-dns, dnsmasq, dnsmasq, heimdall-dns (the machine
                      is shared: a drift in its load hits both servers alike)
dnsmasq_qps           the same dnsperf command, same client and file, against dnsmasq: the mean of the two
                      runs in the middle
dns_qps_ratio         dns_qps / dnsmasq_qps
dns_p99_ms_at_5k_qps  heimdall-dns at a fixed rate: `dnsperf -Q 5000 -l SECONDS -q 100 -t 1 -v`; the 99th
                      percentile of the per-query latencies `-v` prints (one "> RCODE NAME TYPE SECONDS" line
                      per answer; dnsperf 2.10 has no histogram option), a lost query counted as the 1 s timeout
dns_lost_queries      queries lost (timed out) in the fixed-rate run
dnsmasq_p99_ms_at_5k_qps  the same fixed-rate run against dnsmasq: what the client, the lab and the machine's
                      load add on their own
dns_cpu_us_per_query  CPU time (user + system, from /proc) of the busiest process on node1 (heimdall-dns) per
                      answered query during the throughput runs: less sensitive to the machine's load than qps
dnsmasq_cpu_us_per_query  the same for dnsmasq on its host
route_converge_ms_p99 a route via node2 created or deleted on the master's Redis (ROUTES changes, each a creation
                      and a deletion, 0.25 s apart: bench.cluster.write_routes) -> in the WireGuard allowed IPs
                      of node1 and of the peer, from the "applied rev N" log lines of heimdall-wg and
                      heimdall-peer (node2, the route's own node, has no WireGuard entry for itself); with the
                      1,050 records present
route_converge_ms_p50 the median of the same

SECONDS is 10 unless HEIMDALL_BENCH_DNS_SECONDS says otherwise (e.g. 1 for a smoke test); ROUTES is 20,
capped at 2 * SECONDS (at least 3): route writes are spaced 0.25 s apart, so 20 changes take 10 s.
HEIMDALL_BENCH_DNS_LOGS=DIR keeps the daemons' logs there.
"""
from __future__ import annotations

import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster import applied_times, figure, latencies_ms, percentile, progress, write_routes
from heimdall import settings
from heimdall.lab import Host, Lab
from heimdall.lab.cluster import LabNode, LabPeer, new_cluster_key, wait_until

SECONDS = float(os.environ.get("HEIMDALL_BENCH_DNS_SECONDS", "10"))
ROUTES = max(3, min(20, round(2 * SECONDS)))
PEERS = 1000
NODES = 50
UNKNOWN_SHARE = 0.1
DOMAIN = "heimdall"
RATE = 5000  # queries per second of the latency run
OUTSTANDING = 100
TIMEOUT = 1  # seconds dnsperf waits for an answer
QUIET = {"debug": "false"}

RECORDS = """
import asyncio, ipaddress, json, sys
import redis.asyncio as aioredis
from heimdall import cluster
from heimdall.state import State
from heimdall.state.ipam import Pool
from heimdall.wg import keys
key, spec = sys.argv[1].encode(), json.loads(sys.argv[2])
async def main():
    r = aioredis.Redis(port=16379, password=cluster.redis_password(key), decode_responses=True)
    state = State(r)
    node_pool = Pool(ipaddress.ip_network(spec["node_network"]), spec["node_prefix"])
    peer_pool = Pool(ipaddress.ip_network(spec["peer_network"]))
    gate = asyncio.Semaphore(8)
    async def node(i):
        async with gate:
            record = await state.upsert_node(f"bench-node-{i}", name=f"gw-{i:02d}",
                                             public_key=keys.public_key(keys.generate_private_key()),
                                             endpoint=f"198.51.100.{i + 1}:51820", grpc_address="", pool=node_pool)
        return record.name, record.tunnel_address
    async def peer(i):
        peer_id, public_key = f"bench-peer-{i}", keys.public_key(keys.generate_private_key())
        async with gate:
            await state.authorize_peer(peer_id)
            record = await state.connect_peer(peer_id, name=f"laptop-{i:04d}", public_key=public_key, pool=peer_pool)
        return record.name, record.address
    names = await asyncio.gather(*(node(i) for i in range(spec["nodes"])), *(peer(i) for i in range(spec["peers"])))
    print(json.dumps(dict(names)))
    await r.aclose()
asyncio.run(main())
"""


def _default(name: str):
    return next(s.default for s in settings.SETTINGS if s.name == name)


def write_records(master: LabNode) -> dict[str, str]:
    """NODES node and PEERS peer records written on ``master``'s Redis; name -> address."""
    spec = {"nodes": NODES, "peers": PEERS, "node_network": _default("node-network"),
            "node_prefix": int(_default("node-subnet-prefix")), "peer_network": _default("peer-network")}
    out = master.host.run([sys.executable, "-c", RECORDS, master.cluster_key, json.dumps(spec)], timeout=300).stdout
    return json.loads(out)


def query_mix(names: list[str]) -> tuple[list[str], int]:
    """dnsperf input lines (shuffled) and how many of them are unknown names."""
    known = [f"{name} A" for name in names] + [f"{name}.{DOMAIN} A" for name in names]
    unknown = [f"nobody-{i:04d}.{DOMAIN} A" for i in range(round(len(known) * UNKNOWN_SHARE / (1 - UNKNOWN_SHARE)))]
    lines = known + unknown
    random.Random(9).shuffle(lines)
    return lines, len(unknown)


def dnsperf(client: Host, server: str, queries: str, *options: str, seconds: float = 0) -> str:
    argv = ["dnsperf", "-s", server, "-d", queries, "-q", str(OUTSTANDING), "-t", str(TIMEOUT), *options]
    return client.run(argv, timeout=seconds + 60).stdout


def stats(out: str) -> dict:
    """qps, lost and the response codes of a dnsperf run."""
    codes = dict((code, int(count)) for code, count in re.findall(r"(\w+) (\d+) \([\d.]+%\)",
                                                                  re.search(r"Response codes:(.*)", out)[1]))
    return {"qps": float(re.search(r"Queries per second:\s+([\d.]+)", out)[1]),
            "lost": int(re.search(r"Queries lost:\s+(\d+)", out)[1]), "codes": codes}


def answers_all(client: Host, server: str, queries: str, lines: int, unknown: int) -> bool:
    """One pass over the file: every known name NOERROR, every unknown one NXDOMAIN, nothing lost."""
    result = stats(dnsperf(client, server, queries, "-n", "1"))
    return result["lost"] == 0 and result["codes"] == {"NOERROR": lines - unknown, "NXDOMAIN": unknown}


def cpu_ticks(host: Host) -> dict[int, tuple[str, int]]:
    """pid -> (command, user + system clock ticks) of every process on ``host``."""
    found = {}
    for pid in host.pids():
        try:
            comm, fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        fields = fields.split()
        found[pid] = (comm.split("(", 1)[1], int(fields[11]) + int(fields[12]))
    return found


def max_qps(client: Host, server: str, queries: str, seconds: float, watched: Host) -> tuple[float, float]:
    """(dnsperf's qps over ``seconds``, CPU microseconds per answered query of the busiest process on
    ``watched``, the server's host); the CPU of every process there goes to stderr."""
    before = cpu_ticks(watched)
    result = stats(dnsperf(client, server, queries, "-l", str(seconds), seconds=seconds))
    after = cpu_ticks(watched)
    tick = os.sysconf("SC_CLK_TCK")
    used: dict[str, float] = {}
    for pid, (comm, ticks) in after.items():
        used[comm] = used.get(comm, 0) + (ticks - before.get(pid, (comm, 0))[1]) / tick / seconds * 100
    busy = ", ".join(f"{comm} {pct:.0f}%" for comm, pct in sorted(used.items(), key=lambda i: -i[1]) if pct >= 1)
    progress(f"{server}: {result['qps']:.0f} qps, {result['lost']} lost, {result['codes']}; CPU on "
             f"{watched.name}: {busy or 'none'}")
    server_cpu = max(used.values(), default=0.0)  # the server is the busiest process of its host
    return result["qps"], server_cpu / 100 / result["qps"] * 1e6


def p99_at_rate(client: Host, server: str, queries: str) -> tuple[float, int]:
    """(p99 latency in ms at RATE qps, queries lost), from dnsperf -v's per-query latencies."""
    out = dnsperf(client, server, queries, "-Q", str(RATE), "-l", str(SECONDS), "-v", seconds=SECONDS)
    latencies = [float(s) * 1000 for s in re.findall(r"^> \w+ \S+ \w+ ([\d.]+)$", out, re.M)]
    lost = stats(out)["lost"]
    progress(f"{server} at {RATE} qps: {len(latencies)} answered, {lost} lost, "
             f"p50 {statistics.median(latencies):.3f} ms")
    return percentile(latencies + [TIMEOUT * 1000.0] * lost, 99), lost


class Dnsmasq:
    """Debian's dnsmasq on its own lab host, serving ``names`` from a hosts file."""

    def __init__(self, host: Host, names: dict[str, str], logs: Path) -> None:
        self.host = host
        host.path("/etc/heimdall/bench.hosts").write_text(
            "".join(f"{address} {name} {name}.{DOMAIN}\n" for name, address in names.items()))
        self.proc = host.spawn(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--addn-hosts=/etc/heimdall/bench.hosts",
             f"--domain={DOMAIN}", f"--local=/{DOMAIN}/", "--cache-size=10000", "--bind-interfaces",
             f"--listen-address={host.underlay_ip}", "--port=53", "--user=root", "--group=root", "--pid-file=",
             "--log-facility=-"], log=logs / "resolver.dnsmasq.log")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


def run() -> None:
    key = new_cluster_key()
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        logs = Path(os.environ.get("HEIMDALL_BENCH_DNS_LOGS") or tmp)
        logs.mkdir(parents=True, exist_ok=True)
        nodes: list[LabNode] = []
        peer = dnsmasq = None
        try:
            progress("bringing up 2 nodes and a peer")
            first = LabNode(lab.add_host("node1"), key, logs, settings=QUIET).start().wait_member()
            nodes.append(first)
            nodes.append(LabNode(lab.add_host("node2"), key, logs, join=first, settings=QUIET).start().wait_member())
            for node in nodes:
                node.wait_serving()
            assert first.hctl("peers", "authorize", "bench-peer").returncode == 0
            peer = LabPeer(lab.add_host("peer"), "bench-peer", nodes, logs,
                           settings={**QUIET, "dns-resolver": "none"}).start()
            wait_until(lambda: peer.reaches(nodes), 60, "the peer to reach both nodes")
            client, resolver = lab.add_host("client"), lab.add_host("resolver")
            server = first.tunnel_address
            client.run(["ip", "route", "add", f"{server}/32", "via", first.host.underlay_ip])

            progress(f"writing {NODES} node and {PEERS} peer records")
            began = time.monotonic()
            names = write_records(first)
            progress(f"written in {time.monotonic() - began:.1f} s")
            lines, unknown = query_mix(list(names))
            client.path("/etc/heimdall/queries.txt").write_text("\n".join(lines) + "\n")
            queries = "/etc/heimdall/queries.txt"
            wait_until(lambda: answers_all(client, server, queries, len(lines), unknown), 120,
                       "heimdall-dns on node1 to answer every name", interval=0.5)
            progress(f"heimdall-dns answers all {len(names)} names {time.monotonic() - began:.1f} s after the "
                     "first write")
            dnsmasq = Dnsmasq(resolver, names, logs)
            wait_until(lambda: answers_all(client, resolver.underlay_ip, queries, len(lines), unknown), 20,
                       "dnsmasq to answer every name", interval=0.2)

            # ABBA, half the time each: a drift in the machine's load (it is shared) hits both alike.
            half = SECONDS / 2
            progress(f"maximum throughput, {half:g} s per run ({len(lines)} queries in the mix, {unknown} unknown)")
            dns_runs, dnsmasq_runs = [max_qps(client, server, queries, half, first.host)], []
            dnsmasq_runs += [max_qps(client, resolver.underlay_ip, queries, half, resolver) for _ in range(2)]
            dns_runs.append(max_qps(client, server, queries, half, first.host))
            dns_qps, dnsmasq_qps = (statistics.mean(q for q, _ in runs) for runs in (dns_runs, dnsmasq_runs))
            dns_us, dnsmasq_us = (statistics.mean(us for _, us in runs) for runs in (dns_runs, dnsmasq_runs))
            p99, lost = p99_at_rate(client, server, queries)
            dnsmasq_p99, _ = p99_at_rate(client, resolver.underlay_ip, queries)

            progress(f"{ROUTES} route changes via node2")
            written = write_routes(first, nodes[1], changes=ROUTES)

            def applied() -> list[dict[int, float]]:
                return [applied_times(first.log("heimdall-wg")), applied_times(peer.log(), "heimdall-peer")]

            wait_until(lambda: all(max(a, default=0) >= max(written) for a in applied()), 60,
                       "node1 and the peer to apply the last route change")
            converge = latencies_ms(written, applied())
            for where, times in zip(("node1", "the peer"), applied()):
                alone = latencies_ms(written, [times])
                progress(f"route changes applied on {where}: p50 {statistics.median(alone):.0f} ms, "
                         f"max {max(alone):.0f} ms")
        finally:
            if dnsmasq is not None:
                dnsmasq.stop()
            if peer is not None:
                peer.stop()
            for node in nodes:
                node.stop()
    figure("dns_qps", dns_qps, "qps")
    figure("dnsmasq_qps", dnsmasq_qps, "qps")
    figure("dns_qps_ratio", dns_qps / dnsmasq_qps, "ratio")
    figure("dns_p99_ms_at_5k_qps", p99, "ms")
    figure("dns_lost_queries", lost, "queries")
    figure("dnsmasq_p99_ms_at_5k_qps", dnsmasq_p99, "ms")
    figure("dns_cpu_us_per_query", dns_us, "us")
    figure("dnsmasq_cpu_us_per_query", dnsmasq_us, "us")
    figure("route_converge_ms_p50", statistics.median(converge), "ms")
    figure("route_converge_ms_p99", percentile(converge, 99), "ms")
