"""Access-only peer figures on simulated hosts with the real daemons (two nodes, three peers).

peer_connect_s    authorize (API call) + start heimdall-peer -> the peer pings a node's tunnel address
                  (median of the peers, connected one after the other)
peer_push_ms_p50/99  a route written on the master -> applied on every connected peer (its "applied rev N"
                  log line), over the route creations and deletions of bench.cluster.write_routes
revoke_ms         deauthorize (API call) -> no node answers the peer any more, probed every 10 ms (an
                  upper bound: PingFlow.unanswered_by; the largest of the peers)
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

from bench.cluster import applied_times, figure, latencies_ms, percentile, progress, write_routes
from heimdall.api.v1 import heimdall_pb2 as pb
from heimdall.lab import Lab
from heimdall.lab.cluster import LabNode, LabPeer, new_cluster_key, wait_until
from heimdall.lab.tunnels import PingFlow

PEERS = 3
PROBE_INTERVAL = 0.01  # seconds between probes of a revoked peer
QUIET = {"debug": "false"}


def connect(node: LabNode, peer: LabPeer) -> float:
    """Seconds from authorizing ``peer`` and starting its daemon to its first answer from ``node``."""
    began = time.monotonic()
    node.api("AuthorizePeer", pb.AuthorizePeerRequest(peer_id=peer.peer_id))
    peer.start()
    wait_until(lambda: peer.pings(node.tunnel_address, wait=0.2), 60, f"{peer.name} to ping {node.name}",
               interval=0.01)
    return time.monotonic() - began


def revoke(node: LabNode, peer: LabPeer, nodes: list[LabNode], logs: Path) -> float:
    """Milliseconds from deauthorizing ``peer`` until none of ``nodes`` answers it any more (an upper bound)."""
    flows = [PingFlow(peer.host, n.tunnel_address, 3, logs / f"revoke-{peer.name}-{n.name}.log",
                      interval=PROBE_INTERVAL) for n in nodes]
    wait_until(lambda: all(len(f.reply_times()) >= 5 for f in flows), 5, f"{peer.name}'s probes to be answered")
    began = time.time()
    node.api("DeauthorizePeer", pb.DeauthorizePeerRequest(peer_id=peer.peer_id))
    for flow in flows:
        flow.wait()
    if any(peer.pings(n.tunnel_address, wait=0.2) for n in nodes):
        raise RuntimeError(f"{peer.name} still reaches a node after its deauthorization")
    return (max(f.unanswered_by() for f in flows) - began) * 1000


def run() -> None:
    key = new_cluster_key()
    with tempfile.TemporaryDirectory() as tmp, Lab() as lab:
        logs = Path(tmp)
        nodes: list[LabNode] = []
        peers: list[LabPeer] = []
        try:
            progress("bringing up 2 nodes")
            first = LabNode(lab.add_host("node1"), key, logs, settings=QUIET).start().wait_member()
            nodes.append(first)
            nodes.append(LabNode(lab.add_host("node2"), key, logs, join=first, settings=QUIET).start().wait_member())
            for node in nodes:
                node.wait_serving()
            wait_until(lambda: nodes[1].pings(first.tunnel_address), 30, "the two nodes to reach each other")

            progress(f"connecting {PEERS} peers")
            connects = []
            for i in range(PEERS):
                # Alternate first nodes: pushes come down streams from both nodes.
                order = nodes if i % 2 == 0 else nodes[::-1]
                peer = LabPeer(lab.add_host(f"peer{i + 1}"), f"peer-{i + 1}", order, logs, settings=QUIET)
                peers.append(peer)
                connects.append(connect(order[0], peer))
            progress(f"connect times: {', '.join(f'{s:.2f} s' for s in connects)}")
            wait_until(lambda: all(p.reaches(nodes) for p in peers), 30, "every peer to reach every node")

            progress("route changes pushed to the peers")
            written = write_routes(first, nodes[1])
            time.sleep(1)
            pushes = latencies_ms(written, [applied_times(p.log(), "heimdall-peer") for p in peers])

            progress("revoking the peers")
            revokes = [revoke(first, peer, nodes, logs) for peer in peers]
            progress(f"revoke times: {', '.join(f'{ms:.0f} ms' for ms in revokes)}")
        finally:
            for peer in peers:
                peer.stop()
            for node in nodes:
                node.stop()
    figure("peer_connect_s", statistics.median(connects), "s")
    figure("peer_push_ms_p50", statistics.median(pushes), "ms")
    figure("peer_push_ms_p99", percentile(pushes, 99), "ms")
    figure("revoke_ms", max(revokes), "ms")
