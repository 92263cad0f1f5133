"""Master failover with the real daemons on simulated hosts: a crash, a return, a partition.

"Dies" means every process of that host gets SIGKILL at once (daemons, redis-server,
the sentinel, wireguard-go): no clean stream end, no last words. One network serves
the module and the tests run in file order, each starting from the master the
previous one left: node1 dies and another node takes over; node1 comes back as a
replica and, being the oldest, is promoted when the next master dies; then that
master is cut off by a partition and comes back as a replica again.
"""
import json
import time

import pytest

from heimdall.lab import Lab
from heimdall.lab.cluster import (AckedWriter, LabNode, LabPeer, elections_ready, new_cluster_key,
                                  settled_on_one_master, start_nodes, start_peer, stopping, the_master, wait_until)
from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow, assert_no_loss
from heimdall.state import keys

pytestmark = pytest.mark.integration

P1, P2 = "roadwarrior-1", "roadwarrior-2"
ROUTE = "192.168.77.0/24"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    logs = tmp_path_factory.mktemp("failover-logs")
    key = new_cluster_key()
    with Lab() as lab:
        nodes = start_nodes(lab, key, logs, ("node1", "node2", "node3"))
        # The peer's control stream is on node2, so the master's death is not also its node's.
        peers = {P1: start_peer(lab, "peer1", P1, [nodes[1], nodes[2], nodes[0]], logs)}
        with stopping(nodes, peers.values()):
            yield {"lab": lab, "logs": logs, "key": key, "nodes": nodes, "peers": peers}


def debug(net) -> str:
    return "\n".join([*(n.logs() for n in net["nodes"]), *(p.logs() for p in net["peers"].values())])


def wait_elections_ready(net, nodes) -> None:
    wait_until(lambda: elections_ready(nodes), 60, f"every sentinel to know every voter and replica\n{debug(net)}")


def every_daemon_follows(nodes: list[LabNode], master: LabNode, since: float) -> bool:
    """Every node's API names ``master``, and every node's heimdall-wg heartbeats reach it (writes there)
    after ``since``, a moment when ``master`` was already master."""
    for node in nodes:
        status = json.loads(node.hctl("status", "--json").stdout or "{}")
        if (status.get("master") or {}).get("node_id") != master.node_id:
            return False
    return all(int(master.redis("HGET", keys.SEEN, n.node_id).strip() or 0) >= int(since) for n in nodes)


def test_the_master_node_dies_and_another_takes_over_losing_nothing(net):
    lab, logs, nodes = net["lab"], net["logs"], net["nodes"]
    n1, n2, n3 = nodes
    p1 = net["peers"][P1]
    wait_elections_ready(net, nodes)
    assert the_master(nodes) is n1
    # Every node's Redis would refuse writes as an isolated master, the joined ones too.
    wait_until(lambda: all(n.redis("CONFIG", "GET", "min-replicas-to-write").split()[1] == "1" for n in nodes), 20,
               "every node's Redis to require a replica for writes")
    flows = [PingFlow(n2.host, n3.tunnel_address, LIVE_FLOW_SECONDS, logs / "n2-n3.log"),
             PingFlow(p1.host, n2.tunnel_address, LIVE_FLOW_SECONDS, logs / "p1-n2.log"),
             PingFlow(p1.host, n3.tunnel_address, LIVE_FLOW_SECONDS, logs / "p1-n3.log")]
    writer = AckedWriter(n3, "before-and-during")
    writer.start()
    wait_until(lambda: len(writer.acknowledged) >= 5, 20, "the writer to have changes acknowledged")

    killed_at = time.time()
    n1.host.crash()
    # A fourth node asks to join through node3 at once, during the failover: it gets in, or is told to retry.
    n4 = LabNode(lab.add_host("node4"), net["key"], logs, join=n3).start()
    nodes.append(n4)
    survivors = [n2, n3]
    master = wait_until(lambda: settled_on_one_master(survivors), 30,
                        f"a survivor to become master, the other replicating it\n{debug(net)}")
    settled_at = time.time()
    wait_until(lambda: writer.acknowledged_after(killed_at), 30, f"a write acknowledged after the kill\n{debug(net)}")
    acknowledged = writer.stop()
    assert int(master.redis("GET", keys.REV)) > 0
    stored = master.redis("HKEYS", keys.AUTHORIZED).split()
    assert set(acknowledged) <= set(stored), f"acknowledged writes lost: {set(acknowledged) - set(stored)}"
    epochs = {n.redis("HGET", keys.MASTER, "epoch").strip() for n in survivors}
    assert epochs == {"2"}, f"the epoch did not go up by one: {epochs}"
    wait_until(lambda: every_daemon_follows(survivors, master, settled_at), 20,
               "every survivor's daemons to follow the new master")

    # Afterwards: a new peer is authorized and a route is added (through a replica's API); the fourth node is in.
    replica = n3 if master is n2 else n2
    assert replica.hctl("peers", "authorize", P2).returncode == 0
    p2 = net["peers"][P2] = LabPeer(lab.add_host("peer2"), P2, [replica, master], logs).start()
    wait_until(lambda: p2.reaches(survivors), 30, f"the new peer to reach the survivors\n{debug(net)}")
    created = replica.hctl("routes", "create", "--node-id", master.node_id, "--network", ROUTE)
    assert created.returncode == 0, created.stderr
    wait_until(lambda: ROUTE in replica.wg_peers()[master.public_key] and ROUTE in p1.wg_peers()[master.public_key],
               20, "the route to reach the other survivor and the peer")
    n4.wait_member()
    refusals = [line for line in n4.log("heimdall-wg").splitlines() if "cannot join via" in line]
    retryable = ("UNAVAILABLE", "DEADLINE_EXCEEDED")  # what heimdall-wg retries; anything else would be final
    assert all(any(code in line for code in retryable) for line in refusals), \
        f"a join during the failover failed otherwise: {refusals}"
    wait_until(lambda: all(a.pings(b.tunnel_address) for a in (*survivors, n4) for b in (*survivors, n4) if a is not b),
               30, f"the fourth node to join the survivors' mesh\n{debug(net)}")
    wait_until(lambda: n4.is_replica_of(master), 20, "the fourth node to replicate the new master")
    assert_no_loss(flows, "the master died and the survivors elected another")


def test_the_old_master_comes_back_as_a_replica_and_the_oldest_is_preferred(net):
    n1, n2, n3, n4 = net["nodes"]
    master = the_master([n2, n3, n4])
    n1.start().wait_member()
    wait_until(lambda: n1.is_replica_of(master), 30, f"the old master to replicate the new one\n{debug(net)}")
    assert the_master(net["nodes"]) is master
    replicating_at = time.time()
    wait_until(lambda: every_daemon_follows(net["nodes"], master, replicating_at), 20,
               "node1's daemons to follow the new master")
    assert n1.redis("HGET", keys.MASTER, "epoch").strip() == "2"
    wait_until(lambda: n1.pings(n4.tunnel_address) and n4.pings(n1.tunnel_address), 20,
               "the old master to reach the node that joined while it was gone")
    status = json.loads(master.hctl("status", "--json").stdout)
    order = {row["name"]: row["failover_order"] for row in status["nodes"]}
    assert order["node1"] == 1, f"node1 joined first: it should be next in line: {order}"

    # The next failover promotes the oldest survivor: node1.
    wait_elections_ready(net, net["nodes"])
    master.host.crash()
    survivors = [n for n in net["nodes"] if n is not master]
    new = wait_until(lambda: settled_on_one_master(survivors), 30, f"a new master after the second kill\n{debug(net)}")
    assert new is n1, f"{new.name} was promoted, not the oldest survivor node1"
    assert {n.redis("HGET", keys.MASTER, "epoch").strip() for n in survivors} == {"3"}
    master.start().wait_member()
    wait_until(lambda: master.is_replica_of(n1), 30, f"{master.name} to come back as a replica")


def test_a_partitioned_master_refuses_writes_and_rejoins_as_a_replica(net):
    nodes = net["nodes"]
    wait_elections_ready(net, nodes)
    old = the_master(nodes)
    others = [n for n in nodes if n is not old]
    cut = [["iptables", "-w", "-I", "INPUT", "-i", "eth0", "-j", "DROP"],
           ["iptables", "-w", "-I", "OUTPUT", "-o", "eth0", "-j", "DROP"]]
    for rule in cut:
        old.host.run(rule)
    try:
        # From the first moment the isolated master acknowledges nothing: a write waits for replicas in vain.
        assert old.hctl("peers", "authorize", "split-brain-1").returncode != 0, "an isolated master acknowledged"
        new = wait_until(lambda: settled_on_one_master(others), 30,
                         f"the majority to elect a master among themselves\n{debug(net)}")
        # Once its replicas are 2 s silent it refuses writes outright (min-replicas-to-write).
        wait_until(lambda: "NOREPLICAS" in old.redis("SET", "heimdall:probe", "split-brain", check=False), 15,
                   "the isolated old master to refuse writes")
        assert old.hctl("peers", "authorize", "split-brain-2").returncode != 0, "an isolated master acknowledged"
        assert new.hctl("peers", "authorize", "majority-peer").returncode == 0
    finally:
        for rule in cut:
            old.host.run([*rule[:2], "-D", *rule[3:]])
    wait_until(lambda: old.is_replica_of(new), 30, f"the old master to replicate the new one after healing\n{debug(net)}")
    assert the_master(nodes) is new
    healed_at = time.time()
    wait_until(lambda: every_daemon_follows(nodes, new, healed_at), 20,
               "every daemon on every node to follow the same record")
    for node in nodes:  # what the old master took in before it refused is gone with its history
        assert not {"split-brain-1", "split-brain-2"} & set(node.redis("HKEYS", keys.AUTHORIZED).split())
        assert node.redis("GET", "heimdall:probe").strip() == ""
    assert "majority-peer" in old.redis("HKEYS", keys.AUTHORIZED)
    epochs = {n.redis("HGET", keys.MASTER, "epoch").strip() for n in nodes}
    assert epochs == {"4"}, epochs
