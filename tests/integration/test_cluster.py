"""A gateway cluster of real daemons on simulated hosts: join, convergence, secrets, crash safety.

One cluster serves the module (bringing one up costs seconds); tests run in file
order and the destructive ones (killing daemons) come last.
"""
import base64
import json
import os
import signal
import sys

import pytest

from heimdall.lab import Lab
from heimdall.lab.cluster import BIN, LabNode, NodeError, new_cluster_key, wait_until
from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow, assert_no_loss
from heimdall.state import keys

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    logs = tmp_path_factory.mktemp("cluster-logs")
    key = new_cluster_key()
    with Lab() as lab:
        nodes = []
        try:
            # A short resync interval lets the drift-repair test run in seconds.
            settings = {"resync-interval": "2"}
            first = LabNode(lab.add_host("node1"), key, logs, settings=settings).start().wait_member()
            nodes.append(first)
            for name in ("node2", "node3"):
                nodes.append(LabNode(lab.add_host(name), key, logs, join=first, settings=settings).start())
            for node in nodes:
                node.wait_member()
            yield {"lab": lab, "nodes": nodes, "key": key, "logs": logs}
        finally:
            for node in nodes:
                node.stop()


def all_ping(nodes) -> bool:
    return all(a.pings(b.tunnel_address) for a in nodes for b in nodes if a is not b)


def replicating(node, master) -> bool:
    info = node.replication()
    return (info.get("role") == "slave" and info.get("master_host") == master.tunnel_address
            and info.get("master_link_status") == "up")


def test_three_nodes_form_a_full_mesh_and_replicate_the_first(cluster):
    nodes = cluster["nodes"]
    first = nodes[0]
    try:
        wait_until(lambda: all_ping(nodes), 20, "every node to ping every other node's tunnel address")
        for node in nodes[1:]:
            wait_until(lambda: replicating(node, first), 20, f"{node.name} to replicate {first.name}")
    except NodeError:
        pytest.fail("\n".join(n.logs() for n in nodes))
    assert first.replication()["role"] == "master"
    subnets = {n.membership()["subnet"] for n in nodes}
    assert len(subnets) == 3
    for node in nodes:  # each node has a WireGuard entry for both others, with their subnets
        peers = node.wg_peers()
        assert sorted(sum(peers.values(), [])) == sorted(n.membership()["subnet"] for n in nodes if n is not node)


def test_a_fourth_node_joins_without_loss_or_interface_restart(cluster):
    lab, nodes, key = cluster["lab"], cluster["nodes"], cluster["key"]
    n1, n2, n3 = nodes
    ifindexes = {n.name: n.ifindex() for n in nodes}
    flows = [PingFlow(n1.host, n2.tunnel_address, LIVE_FLOW_SECONDS, cluster["logs"] / "flow12.log").wait_answered(),
             PingFlow(n2.host, n3.tunnel_address, LIVE_FLOW_SECONDS, cluster["logs"] / "flow23.log").wait_answered()]
    n4 = LabNode(lab.add_host("node4"), key, cluster["logs"], join=n1).start()
    nodes.append(n4)
    n4.wait_member()
    wait_until(lambda: all_ping(nodes), 20, "the fourth node to reach everyone and be reached")
    assert_no_loss(flows, "a fourth node joined")
    assert {n.name: n.ifindex() for n in nodes[:3]} == ifindexes
    # Settled, as the next tests expect: its Redis replicates node1 and its heartbeat is in the state.
    wait_until(lambda: n4.is_replica_of(n1) and n2.redis("HGET", keys.SEEN, n4.node_id).strip(), 20,
               "node4's Redis to replicate node1 and its heartbeat to reach node2")


def test_no_secret_in_any_redis_and_redis_not_on_the_underlay(cluster):
    nodes = cluster["nodes"]
    secrets = {cluster["key"]}
    for node in nodes:
        secrets |= {node.private_key, base64.b64decode(node.private_key).hex()}
    for node in nodes:
        text = node.redis_dump()
        assert "heimdall:rev" in text
        for secret in secrets:
            assert secret not in text
        mode = os.stat(node.host.path("/var/lib/heimdall/wireguard.key")).st_mode & 0o777
        assert mode == 0o600
    # From another host: the Redis port answers on the tunnel address only.
    other = nodes[1]
    refused = other.host.run(["redis-cli", "-h", nodes[0].host.underlay_ip, "-p", "16379", "PING"], check=False)
    assert "PONG" not in refused.stdout and "NOAUTH" not in refused.stdout
    tunnel = other.host.run(["redis-cli", "-h", nodes[0].tunnel_address, "-p", "16379", "PING"], check=False)
    assert "NOAUTH" in tunnel.stdout  # listening there, and a password is required


def test_status_shows_heartbeats_and_handshake_ages(cluster):
    n1, n2 = cluster["nodes"][:2]

    def with_handshakes() -> dict | None:
        """node2's status once it shows a handshake with every other node (reported every few heartbeats:
        a node that joined just now may have none yet)."""
        found = json.loads(n2.host.run([str(BIN / "hctl"), "status", "--json"]).stdout)
        others = [row for row in found["nodes"] if row["name"] != "node2"]
        return found if all(row["handshake_age"] is not None for row in others) else None

    status = wait_until(with_handshakes, 30, "node2's handshakes to be reported")
    rows = {row["name"]: row for row in status["nodes"]}
    assert status["node_id"] == n2.node_id and status["master"]["node_id"] == n1.node_id
    assert all(row["heartbeat_age"] is not None and row["heartbeat_age"] < 10 for row in rows.values())
    assert rows["node2"]["handshake_age"] is None  # itself
    assert rows["node1"]["handshake_age"] is not None and rows["node1"]["handshake_age"] < 180
    human = n2.host.run([str(BIN / "hctl"), "status"]).stdout
    assert "HANDSHAKE" in human and "(self)" in human


def test_sighup_reloads_the_firewall_without_touching_the_tunnels(cluster):
    n3 = cluster["nodes"][2]
    conf = n3.host.path("/etc/heimdall/heimdall.conf")
    original = conf.read_text()
    rules = lambda: n3.host.run(["iptables", "-S", "HEIMDALL-FORWARD"]).stdout  # noqa: E731
    index = n3.ifindex()
    assert "-j DROP" in rules()  # peers isolated by default
    try:
        conf.write_text(original + "allow-peer-to-peer = true\n")
        n3.signal_daemon("heimdall-wg", signal.SIGHUP)
        wait_until(lambda: "-j DROP" not in rules(), 10, "the reloaded firewall to allow peer-to-peer traffic")
    finally:
        conf.write_text(original)
        n3.signal_daemon("heimdall-wg", signal.SIGHUP)
    wait_until(lambda: "-j DROP" in rules(), 10, "the firewall to isolate peers again")
    assert n3.ifindex() == index and n3.procs["heimdall-wg"].poll() is None

def test_elector_restores_a_lost_master_record(cluster):
    n1, n3 = cluster["nodes"][0], cluster["nodes"][2]
    n1.redis("DEL", "heimdall:master")
    wait_until(lambda: n1.redis("HGET", "heimdall:master", "node_id").strip() == n1.node_id, 10,
               "heimdall-elector on the master to write the master record again")
    assert n1.redis("HGET", "heimdall:master", "address").strip() == n1.tunnel_address
    wait_until(lambda: n3.redis("HGET", "heimdall:master", "node_id").strip() == n1.node_id, 5,
               "the record to replicate")
    assert n3.redis("HGET", "heimdall:master", "node_id").strip() == n1.node_id

def test_bad_joins_are_refused_and_change_nothing(cluster):
    n1, n2 = cluster["nodes"][:2]
    rev = n1.redis("GET", "heimdall:rev").strip()
    script = f"""
import asyncio, sys
from heimdall.api import client
from heimdall.wg import keys
async def main():
    pub = keys.public_key(keys.generate_private_key())
    try:
        await client.join("tcp://{n1.host.underlay_ip}:9000", b"wrong-key-wrong-key-wrong", node_id="intruder",
                          name="intruder", public_key=pub, endpoint="192.0.2.99:10100",
                          grpc_address="tcp://192.0.2.99:9000")
    except client.JoinRefused as exc:
        print("refused:", exc)
asyncio.run(main())
"""
    out = n2.host.run([sys.executable, "-c", script]).stdout
    assert "refused" in out
    garbage = n2.host.run([sys.executable, "-c", f"""
import socket
s = socket.create_connection(("{n1.host.underlay_ip}", 9000), timeout=5)
s.sendall(bytes(range(256)) * 64)
s.settimeout(5)
try:
    print(len(s.recv(4096)))
except OSError as exc:
    print("closed", exc)
"""]).stdout
    assert garbage
    assert n1.redis("GET", "heimdall:rev").strip() == rev
    assert "intruder" not in n1.redis("SMEMBERS", "heimdall:nodes")
    assert all(p.poll() is None for p in n1.procs.values()), n1.logs()


def test_a_node_with_the_wrong_cluster_key_is_refused_and_says_so(cluster):
    lab, n1 = cluster["lab"], cluster["nodes"][0]
    rev = n1.redis("GET", "heimdall:rev").strip()
    stranger = LabNode(lab.add_host("stranger"), new_cluster_key(), cluster["logs"], join=n1)
    wg = stranger.start_daemon("heimdall-wg")
    assert wg.wait(30) == 2  # a configuration error: systemd does not restart it (RestartPreventExitStatus=2)
    assert "join refused" in stranger.log("heimdall-wg") and "UNAUTHENTICATED" in stranger.log("heimdall-wg")
    assert stranger.membership() is None
    assert n1.redis("GET", "heimdall:rev").strip() == rev

def test_killed_wg_daemon_keeps_tunnels_and_is_readopted(cluster):
    n1, n2, n3 = cluster["nodes"][:3]
    index = n2.ifindex()
    starts = n2.log("heimdall-wg").count("heimdall-wg: started")
    flow = PingFlow(n1.host, n2.tunnel_address, LIVE_FLOW_SECONDS, cluster["logs"] / "flow-kill.log").wait_answered()
    n2.signal_daemon("heimdall-wg", signal.SIGKILL)
    assert n1.pings(n2.tunnel_address), "the tunnel stopped forwarding when heimdall-wg died"
    n2.start_daemon("heimdall-wg")
    wait_until(lambda: n2.log("heimdall-wg").count("heimdall-wg: started") > starts, 15, "heimdall-wg to restart")
    assert_no_loss([flow], "heimdall-wg was killed (-9) and restarted")
    assert n2.ifindex() == index


def test_killed_redis_on_a_replica_comes_back_and_resyncs(cluster):
    n1, n3 = cluster["nodes"][0], cluster["nodes"][2]
    pid = int(n3.redis("INFO", "server").split("process_id:")[1].split()[0])
    n3.host.run(["kill", "-9", str(pid)])
    wait_until(lambda: replicating(n3, n1) and int(n3.redis("INFO", "server").split("process_id:")[1].split()[0])
               != pid, 20, "the replica's redis-server to be restarted and resynced")
    n1.redis("SET", "heimdall:probe", "after-restart")
    wait_until(lambda: n3.redis("GET", "heimdall:probe").strip() == "after-restart", 5, "replication of a new write")
    n1.redis("DEL", "heimdall:probe")


def test_periodic_resync_repairs_a_peer_removed_by_hand(cluster):
    n1, n2 = cluster["nodes"][:2]
    n2.host.run(["wg", "set", "darknet", "peer", n1.public_key, "remove"])
    assert n1.public_key not in n2.wg_peers()
    wait_until(lambda: n1.public_key in n2.wg_peers() and n2.pings(n1.tunnel_address), 10,
               "the periodic resync to put the removed peer back")


def test_redis_outage_keeps_tunnels_and_changes_arrive_after_it(cluster):
    n1, n2, n3 = cluster["nodes"][:3]
    network = "192.168.201.0/24"
    flow = PingFlow(n1.host, n3.tunnel_address, LIVE_FLOW_SECONDS, cluster["logs"] / "flow-outage.log").wait_answered()
    n3.signal_daemon("heimdall-store")  # SIGTERM: redis-server stops with it
    hctl = n1.host.run([str(BIN / "hctl"), "routes", "create", "--node-id", n2.node_id, "--network", network])
    assert hctl.returncode == 0
    assert all_ping(cluster["nodes"][:3]), "a tunnel dropped while a node's Redis was down"
    assert network not in sum(n3.wg_peers().values(), [])
    n3.start_daemon("heimdall-store")
    wait_until(lambda: network in n3.wg_peers()[n2.public_key], 15,
               "node3 to apply the change made while its Redis was down")
    assert_no_loss([flow], "node3's Redis was down and came back")
    n1.host.run([str(BIN / "hctl"), "routes", "delete", network])


def test_a_restarted_node_keeps_its_identity_and_subnet(cluster):
    n3 = cluster["nodes"][2]
    before = (n3.node_id, n3.membership()["subnet"], n3.ifindex())
    subnets = n3.redis("HGETALL", "heimdall:ipam:node-subnets")
    n3.stop()
    n3.start().wait_member()
    wait_until(lambda: all_ping(cluster["nodes"]), 20, "the restarted node to rejoin the mesh")
    assert (n3.node_id, n3.membership()["subnet"], n3.ifindex()) == before
    wait_until(lambda: replicating(n3, cluster["nodes"][0]), 10, "node3's Redis to replicate again")
    assert n3.redis("HGETALL", "heimdall:ipam:node-subnets") == subnets  # nothing new allocated
