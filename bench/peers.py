"""Access-only peer figures on simulated hosts with the real daemons (two nodes, three peers).

peer_connect_s      authorize (API call) + start heimdall-peer -> the peer pings its first node's tunnel
                    address (the slowest of the peers, connected one after the other)
peer_connect_all_s  the same -> the peer pings every node's tunnel address (the slowest peer)
peer_push_ms_p50/99  a route written on the master -> applied on every connected peer (its "applied rev N"
                    log line), over the route creations and deletions of bench.cluster.write_routes
revoke_ms           deauthorize (API call) -> no node answers the peer any more (the slowest peer). The
                    peer does not cooperate: its heimdall-peer is killed first, so its tunnels stay up and
                    only the nodes can cut it off. Probed from the peer every 10 ms (an upper bound:
                    PingFlow.unanswered_by).
revoke_entries_ms   deauthorize -> the peer's WireGuard entry gone from every node (`wg show`, polled: an
                    upper bound; the slowest peer)
"""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

from bench.cluster import figure, latencies_ms, percentile, progress, wait_applied, write_routes
from heimdall.api.v1 import heimdall_pb2 as pb
from heimdall.lab import Lab
from heimdall.lab.cluster import LabNode, LabPeer, new_cluster_key, wait_until
from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow

PEERS = int(os.environ.get("HEIMDALL_BENCH_PEERS", "3"))
PROBE_INTERVAL = 0.01  # seconds between probes of a revoked peer
QUIET = {"debug": "false"}


def connect(nodes: list[LabNode], peer: LabPeer) -> tuple[float, float]:
    """Seconds from authorizing ``peer`` (through its first node) and starting its daemon to its first answer
    from that node, and from every node."""
    began = time.monotonic()
    nodes[0].api("AuthorizePeer", pb.AuthorizePeerRequest(peer_id=peer.peer_id))
    peer.start()
    wait_until(lambda: peer.pings(nodes[0].tunnel_address, wait=0.2), 60, f"{peer.name} to ping {nodes[0].name}",
               interval=0.01)
    first = time.monotonic() - began
    wait_until(lambda: all(peer.pings(n.tunnel_address, wait=0.2) for n in nodes[1:]), 60,
               f"{peer.name} to ping every node", interval=0.01)
    return first, time.monotonic() - began


def revoke(node: LabNode, peer: LabPeer, nodes: list[LabNode], logs: Path) -> tuple[float, float]:
    """Milliseconds from deauthorizing ``peer`` until none of ``nodes`` answers it any more, and until its
    WireGuard entry is gone from all of them (both upper bounds).

    Its heimdall-peer is killed first: a refused heimdall-peer drops its own tunnels, which would time the
    peer cutting itself off. Without it the peer's interface keeps its config, as a hostile peer's would.
    """
    peer.proc.kill()
    peer.proc.wait()
    flows = [PingFlow(peer.host, n.tunnel_address, LIVE_FLOW_SECONDS, logs / f"revoke-{peer.name}-{n.name}.log",
                      interval=PROBE_INTERVAL) for n in nodes]
    wait_until(lambda: all(len(f.reply_times()) >= 5 for f in flows), 5, f"{peer.name}'s probes to be answered")
    began = time.time()
    node.api("DeauthorizePeer", pb.DeauthorizePeerRequest(peer_id=peer.peer_id))
    wait_until(lambda: not any(peer.public_key in n.wg_peers() for n in nodes), 30,
               f"{peer.name}'s entry to leave every node", interval=0.01)
    entries_gone = time.time() - began
    if not all(f.running() for f in flows):
        raise RuntimeError(f"{peer.name}'s probes ended before its revocation was over")
    for flow in flows:
        flow.stop()
    if any(peer.pings(n.tunnel_address, wait=0.2) for n in nodes):
        raise RuntimeError(f"{peer.name} still reaches a node after its deauthorization")
    return (max(f.unanswered_by() for f in flows) - began) * 1000, entries_gone * 1000


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
                connects.append(connect(order, peer))
            progress(f"connect times (first node, every node): {', '.join(f'{a:.2f}/{b:.2f} s' for a, b in connects)}")
            wait_until(lambda: all(p.reaches(nodes) for p in peers), 30, "every peer to reach every node")

            progress("route changes pushed to the peers")
            written = write_routes(first, nodes[1])
            pushes = latencies_ms(written, wait_applied(lambda: [p.log() for p in peers], max(written),
                                                        "heimdall-peer"))

            progress("revoking the peers")
            revokes = [revoke(first, peer, nodes, logs) for peer in peers]
            progress(f"revoke times (unanswered, entries gone): {', '.join(f'{a:.0f}/{b:.0f} ms' for a, b in revokes)}")
        finally:
            for peer in peers:
                peer.stop()
            for node in nodes:
                node.stop()
    figure("peer_connect_s", max(first for first, _ in connects), "s")
    figure("peer_connect_all_s", max(every for _, every in connects), "s")
    figure("peer_push_ms_p50", statistics.median(pushes), "ms")
    figure("peer_push_ms_p99", percentile(pushes, 99), "ms")
    figure("revoke_ms", max(cut for cut, _ in revokes), "ms")
    figure("revoke_entries_ms", max(gone for _, gone in revokes), "ms")
