"""Master failover figures on simulated hosts with the real daemons (three nodes, one peer), default settings.

Each round: the master node dies (SIGKILL of every process of its host) while a
writer authorizes peer IDs through a surviving node's API and the peer pings a
surviving node; then the dead node is started again and comes back as a replica.

failover_s                  kill -> a write acknowledged through a surviving node's API and every surviving
                            node's Redis replicating the new master (median of the rounds)
failover_s_max              the slowest round
failover_lost_writes        writes acknowledged to the writer but missing from the new master (all rounds)
failover_peer_loss_packets  packets the peer lost to a surviving node during all rounds
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.cluster import figure, progress
from heimdall.lab import Lab
from heimdall.lab.cluster import (AckedWriter, LabNode, LabPeer, elections_ready, new_cluster_key,
                                  settled_on_one_master, the_master, wait_until)
from heimdall.lab.tunnels import PingFlow
from heimdall.state import keys

ROUNDS = int(os.environ.get("HEIMDALL_BENCH_FAILOVER_ROUNDS", "5"))
QUIET = {"debug": "false"}
FLOW_SECONDS = 12  # per round: the kill comes 1 s in, the failover takes a few seconds


def one_round(nodes: list[LabNode], peer: LabPeer, logs: Path, number: int) -> tuple[float, int, int]:
    """(failover seconds, lost acknowledged writes, packets the peer lost) of one master's death."""
    wait_until(lambda: elections_ready(nodes), 90, "every sentinel to know every voter and replica")
    master = the_master(nodes)
    survivors = [n for n in nodes if n is not master]
    writer = AckedWriter(survivors[0], f"round{number}")
    flow = PingFlow(peer.host, survivors[-1].tunnel_address, FLOW_SECONDS, logs / f"round{number}.log")
    writer.start()
    wait_until(lambda: writer.acknowledged, 20, "the writer's first acknowledged write")
    time.sleep(1)
    killed = time.time()
    master.host.crash()
    new = wait_until(lambda: settled_on_one_master(survivors), 60, "a new master", interval=0.02)
    replicated = time.time()
    wait_until(lambda: writer.acknowledged_after(killed), 60, "a write acknowledged after the kill", interval=0.02)
    written = min(t for t, _ in writer.acknowledged if t > killed)
    acknowledged = writer.stop()
    stored = set(new.redis("HKEYS", keys.AUTHORIZED).split())
    lost_writes = len(set(acknowledged) - stored)
    sent, received = flow.wait()
    master.start().wait_member()
    wait_until(lambda: master.is_replica_of(new), 60, f"{master.name} to come back as a replica")
    return max(replicated, written) - killed, lost_writes, sent - received


def run() -> None:
    key = new_cluster_key()
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        logs = Path(tmp)
        nodes: list[LabNode] = []
        peer = None
        try:
            progress("bringing up 3 nodes and a peer")
            first = LabNode(lab.add_host("node1"), key, logs, settings=QUIET).start().wait_member()
            nodes.append(first)
            for name in ("node2", "node3"):
                nodes.append(LabNode(lab.add_host(name), key, logs, join=first, settings=QUIET).start().wait_member())
            for node in nodes:
                node.wait_serving()
            assert first.hctl("peers", "authorize", "bench-peer").returncode == 0
            peer = LabPeer(lab.add_host("peer"), "bench-peer", nodes, logs).start()
            wait_until(lambda: peer.reaches(nodes), 60, "the peer to reach every node")
            rounds = []
            for number in range(ROUNDS):
                progress(f"failover round {number + 1} of {ROUNDS}")
                rounds.append(one_round(nodes, peer, logs, number))
        finally:
            if peer is not None:
                peer.stop()
            for node in nodes:
                node.stop()
    times = [seconds for seconds, _, _ in rounds]
    figure("failover_s", statistics.median(times), "s")
    figure("failover_s_max", max(times), "s")
    figure("failover_lost_writes", sum(lost for _, lost, _ in rounds), "writes")
    figure("failover_peer_loss_packets", sum(loss for _, _, loss in rounds), "packets")
