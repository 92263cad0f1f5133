"""Two-node clusters, with the real daemons on simulated hosts: what they do without a witness, and
failover once a witness (heimdall-elector --witness on a peer host) gives them a majority.

Without a witness two sentinels cannot elect (a majority of two is two), so the
README promises exactly this: no failover; while the replica node is down the
master keeps taking writes; while the master node is down no write succeeds,
reads and tunnels go on, and everything resumes when it is back. Tests run in
file order on one network; "dies" is SIGKILL of every process of the host.
"""
import time

import pytest

from heimdall.lab import Lab
from heimdall.lab.cluster import (BIN, LabNode, elections_ready, new_cluster_key, start_nodes, start_peer, stopping,
                                  wait_until)
from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow, assert_no_loss
from heimdall.state import keys

pytestmark = pytest.mark.integration

PEER = "witness-host"
NO_ELECTION_WINDOW = 8  # seconds: several times the failover time of a cluster that can elect


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    logs = tmp_path_factory.mktemp("two-node-logs")
    key = new_cluster_key()
    with Lab() as lab:
        nodes = start_nodes(lab, key, logs, ("node1", "node2"))
        peer = start_peer(lab, "peer", PEER, [nodes[1], nodes[0]], logs)
        with stopping(nodes, [peer]):
            yield {"lab": lab, "logs": logs, "key": key, "nodes": nodes, "peer": peer}


def debug(net) -> str:
    return "\n".join([*(n.logs() for n in net["nodes"]), net["peer"].logs()])


def authorize(node: LabNode, peer_id: str) -> bool:
    return node.hctl("peers", "authorize", peer_id).returncode == 0


def test_without_a_witness_the_master_keeps_taking_writes_while_the_replica_is_down(net):
    n1, n2 = net["nodes"]
    wait_until(lambda: elections_ready(net["nodes"]), 60, f"both sentinels to know each other\n{debug(net)}")
    assert n1.redis("CONFIG", "GET", "min-replicas-to-write").split()[1] == "0"  # no failover can happen
    n2.host.crash()
    # The first write may wait out the replica's last acknowledgement (2 s) and be refused as not replicated.
    wait_until(lambda: authorize(n1, "while-replica-down"), 15, "the master to take writes with the replica down")
    n2.start().wait_member()
    wait_until(lambda: n2.is_replica_of(n1), 30, "node2 to replicate node1 again")
    wait_until(lambda: "while-replica-down" in n2.redis("HKEYS", keys.AUTHORIZED), 10, "the write to reach node2")


def test_without_a_witness_no_node_is_elected_while_the_master_is_down(net):
    n1, n2 = net["nodes"]
    peer = net["peer"]
    wait_until(lambda: peer.reaches([n2]), 30, "the peer to reach node2 again")
    wait_until(lambda: elections_ready(net["nodes"]), 60, f"both sentinels to know each other\n{debug(net)}")
    flow = PingFlow(peer.host, n2.tunnel_address, LIVE_FLOW_SECONDS, net["logs"] / "peer-n2.log").wait_answered()
    n1.host.crash()
    deadline = time.monotonic() + NO_ELECTION_WINDOW
    while time.monotonic() < deadline:
        assert n2.replication()["role"] == "slave", "node2 was promoted without a majority"
        time.sleep(0.5)
    assert not authorize(n2, "while-master-down"), "a write succeeded with the master down and no election"
    assert n2.hctl("peers", "list").returncode == 0  # reads go on
    assert_no_loss([flow], "node1 (the master) was down")
    n1.start().wait_member()
    wait_until(lambda: n2.is_replica_of(n1) and authorize(n2, "master-back"), 30,
               f"writes to work again once node1 is back\n{debug(net)}")


def test_with_a_witness_two_nodes_fail_over(net):
    n1, n2 = net["nodes"]
    peer = net["peer"]
    wait_until(lambda: peer.reaches(net["nodes"]), 30, "the peer to reach both nodes")
    key_file = peer.host.path("/etc/heimdall/cluster.key")
    key_file.touch(mode=0o600)
    key_file.write_text(net["key"] + "\n")
    peer.host.path("/etc/heimdall/heimdall-elector.conf").write_text(
        f"witness = true\nwitness-of = [{n1.tunnel_address}, {n2.tunnel_address}]\n"
        "cluster-key-file = /etc/heimdall/cluster.key\ndebug = true\n")
    witness_log = net["logs"] / "peer.heimdall-elector.log"
    witness = peer.host.spawn([str(BIN / "heimdall-elector")], log=witness_log)
    try:
        wait_until(lambda: PEER in n1.redis("HKEYS", keys.WITNESSES), 30,
                   f"the witness to register\n{witness_log.read_text()[-3000:]}")
        wait_until(lambda: n1.redis("CONFIG", "GET", "min-replicas-to-write").split()[1] == "1", 15,
                   "the master to require a replica now that a failover can happen")
        wait_until(lambda: elections_ready(net["nodes"], voters=3), 60,
                   f"both nodes' sentinels to know the witness\n{debug(net)}\n{witness_log.read_text()[-3000:]}")
        assert n1.sentinel()["quorum"] == "2"
        n1.host.crash()
        wait_until(lambda: n2.replication()["role"] == "master" and authorize(n2, "after-failover"), 30,
                   f"node2 to be elected and take writes\n{debug(net)}\n{witness_log.read_text()[-3000:]}")
        assert n2.redis("HGET", keys.MASTER, "node_id").strip() == n2.node_id
        assert peer.pings(n2.tunnel_address)
        n1.start().wait_member()
        wait_until(lambda: n1.is_replica_of(n2), 30, f"node1 to come back as node2's replica\n{debug(net)}")
    finally:
        witness.terminate()
        assert witness.wait(20) == 0, witness_log.read_text()[-3000:]
