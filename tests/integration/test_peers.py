"""Access-only peers against real daemons on simulated hosts: authorize, connect, push, revoke, fail over.

One network serves the module: node1 bootstraps (its Redis is the master) and
node2 joins it; peer hosts run heimdall-peer, hctl runs on the node hosts over
their operator sockets. Tests run in file order, each leaving the network as the
next expects; the destructive ones (whole nodes killed) come last.
"""
import base64
import json
import os
import sys

import pytest

from heimdall.lab import Lab
from heimdall.lab.cluster import LabNode, LabPeer, new_cluster_key, node_addr, wait_until
from heimdall.lab.hosts import PRIVATE_DIRS
from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow, assert_no_loss
from heimdall.state import keys

pytestmark = pytest.mark.integration

P1, P2 = "laptop-1", "laptop-2"
NODE_CONFIG = ("heimdall-wg", "heimdall-api")  # the daemons that read allow-peer-to-peer

# Calls to a node's API from a host, as a peer (or an impostor) makes them: [[address, method, request
# type, fields]] in argv[1]; prints [[status code name, details]] ("OK" when the call, or a Watch's first
# message, succeeded).
CALLS = """
import asyncio, json, sys
import grpc
from google.protobuf import json_format
from heimdall.api import client
from heimdall.api.v1 import heimdall_pb2 as pb, heimdall_pb2_grpc
async def main():
    results = []
    for address, method, kind, fields in json.loads(sys.argv[1]):
        request = json_format.ParseDict(fields, getattr(pb, kind)())
        async with client.dial(address) as channel:
            call = getattr(heimdall_pb2_grpc.HeimdallStub(channel), method)(request, timeout=5)
            try:
                await (call.read() if method == "Watch" else call)
                results.append(["OK", ""])
            except grpc.aio.AioRpcError as exc:
                results.append([exc.code().name, exc.details()])
    print(json.dumps(results))
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    logs = tmp_path_factory.mktemp("peer-logs")
    key = new_cluster_key()
    with Lab() as lab:
        nodes, peers = [], {}
        try:
            n1 = LabNode(lab.add_host("node1"), key, logs).start().wait_member()
            nodes.append(n1)
            nodes.append(LabNode(lab.add_host("node2"), key, logs, join=n1).start().wait_member())
            wait_until(lambda: all(a.pings(b.tunnel_address) for a in nodes for b in nodes if a is not b), 30,
                       "the two nodes to reach each other")
            for node in nodes:
                node.wait_serving()
            yield {"lab": lab, "logs": logs, "nodes": nodes, "peers": peers}
        finally:
            for peer in peers.values():
                peer.stop()
            for node in nodes:
                node.stop()


def debug(net) -> str:
    """Every daemon's recent log, for a failure message."""
    return "\n".join([*(n.logs() for n in net["nodes"]), *(p.logs() for p in net["peers"].values())])


def calls(host, *calls: tuple[str, str, str, dict]) -> list[list[str]]:
    return json.loads(host.run([sys.executable, "-c", CALLS, json.dumps(calls)]).stdout)


def revision(node: LabNode) -> str:
    return node.redis("GET", keys.REV).strip()


def peer_records(node: LabNode) -> list[str]:
    """What the state holds about peers (every write also bumps the revision; this shows which)."""
    return [node.redis(*command) for command in (("HGETALL", keys.AUTHORIZED), ("SMEMBERS", keys.PEERS),
                                                 ("HGETALL", keys.IPAM_PEER_ADDRESSES), ("HGETALL", keys.peer(P1)))]


def node_has(node: LabNode, peer: LabPeer) -> bool:
    """``peer``'s /32 is on ``node``'s WireGuard interface, under the peer's key."""
    return node.wg_peers().get(peer.public_key) == [f"{peer.address}/32"]


def test_a_peer_is_refused_until_authorized_then_reaches_both_nodes(net):
    n1, n2 = net["nodes"]
    before = revision(n1)
    # Its first node is node2, not the master: its Connect writes through node2 to node1's Redis.
    p1 = net["peers"][P1] = LabPeer(net["lab"].add_host("peer1"), P1, [n2, n1], net["logs"]).start()
    wait_until(lambda: "not authorized yet" in p1.log(), 20, f"the peer to be refused\n{debug(net)}")
    assert p1.address is None and not p1.wg_peers(), "a refused peer got an address or tunnels"
    assert not any(p1.pings(n.tunnel_address) for n in (n1, n2))
    assert revision(n1) == before, "a refused Connect wrote to the state"
    assert not any(p1.public_key in n.redis_dump() or p1.public_key in n.wg_peers() for n in (n1, n2))

    authorized = n2.hctl("peers", "authorize", P1)
    assert authorized.returncode == 0, authorized.stderr
    assert f"authorized peer {P1}" in authorized.stdout
    wait_until(lambda: p1.reaches([n1, n2]), 20, f"the authorized peer to reach both nodes\n{debug(net)}")
    assert p1.connections() == [node_addr(n2)]
    assert all(node_has(n, p1) for n in (n1, n2))
    listed = {p["id"]: p for p in json.loads(n1.hctl("peers", "list", "--json").stdout)}
    assert listed[P1]["public_key"] == p1.public_key and listed[P1]["address"] == p1.address


def test_a_second_peer_connects_while_the_first_loses_nothing(net):
    n1, n2 = net["nodes"]
    p1 = net["peers"][P1]
    flows = [PingFlow(p1.host, n.tunnel_address, LIVE_FLOW_SECONDS, net["logs"] / f"p1-{n.name}-join.log").wait_answered()
             for n in (n1, n2)]
    assert n1.hctl("peers", "authorize", P2).returncode == 0
    p2 = net["peers"][P2] = LabPeer(net["lab"].add_host("peer2"), P2, [n1, n2], net["logs"]).start()
    wait_until(lambda: p2.reaches([n1, n2]), 20, f"the second peer to reach both nodes\n{debug(net)}")
    assert_no_loss(flows, "a second peer was authorized and connected")
    assert all(node_has(n, p) for n in (n1, n2) for p in (p1, p2))
    assert p1.address != p2.address


def test_peers_cannot_reach_each_other_by_default(net):
    p1, p2 = net["peers"][P1], net["peers"][P2]
    assert p1.reaches(net["nodes"]) and p2.reaches(net["nodes"])  # the paths to the nodes work...
    assert not p1.pings(p2.address) and not p2.pings(p1.address)  # ...the one between the peers does not


def on_first_nodes(net) -> bool:
    """Each peer's control stream is on its first node: peer1's on node2, peer2's on node1."""
    n1, n2 = net["nodes"]
    return [p.connections()[-1:] for p in net["peers"].values()] == [[node_addr(n2)], [node_addr(n1)]]


def reconfigure(net, settings: dict[str, str]) -> None:
    """Restart the nodes' daemons with ``settings``, then the peers, so each is on its first node again."""
    for node in net["nodes"]:
        node.restart(NODE_CONFIG, settings)
        node.wait_serving()
    peers = list(net["peers"].values())
    before = [len(p.connections()) for p in peers]
    for peer in peers:
        peer.restart()
    wait_until(lambda: all(len(p.connections()) > n for p, n in zip(peers, before)) and on_first_nodes(net), 15,
               f"the peers to connect to their first nodes\n{debug(net)}")


def test_with_peer_to_peer_allowed_peers_on_different_nodes_reach_each_other(net):
    n1, n2 = net["nodes"]
    p1, p2 = net["peers"][P1], net["peers"][P2]
    try:
        reconfigure(net, {"allow-peer-to-peer": "true"})
        wait_until(lambda: p1.pings(p2.address) and p2.pings(p1.address), 10,
                   f"the peers to reach each other\n{debug(net)}")
        assert on_first_nodes(net)
    finally:
        reconfigure(net, {"allow-peer-to-peer": "false"})
    wait_until(lambda: not p1.pings(p2.address) and not p2.pings(p1.address), 10,
               "peer-to-peer traffic to stop again")
    assert p1.reaches([n1, n2]) and p2.reaches([n1, n2])


def test_deauthorizing_cuts_the_peer_off_every_node(net):
    """How fast: `python -m bench peers`, revoke_ms."""
    n1, n2 = net["nodes"]
    p2 = net["peers"][P2]
    assert p2.reaches([n1, n2])
    revoked = n1.hctl("peers", "deauthorize", P2)
    assert revoked.returncode == 0, revoked.stderr
    wait_until(lambda: not any(p2.public_key in n.wg_peers() for n in (n1, n2)), 15,
               "the peer's entry to leave every node")
    assert not any(p2.pings(n.tunnel_address) for n in (n1, n2))
    wait_until(lambda: "refused by the network" in p2.log(), 5, "the peer to be told (its stream closed)")
    assert not p2.wg_peers(), "the deauthorized peer kept tunnels"
    assert P2 not in n1.redis("HKEYS", keys.AUTHORIZED) and P2 not in n2.redis("SMEMBERS", keys.PEERS)


def test_an_impostor_with_another_key_is_refused_and_changes_nothing(net):
    n1, n2 = net["nodes"]
    p1 = net["peers"][P1]
    impostor = net["lab"].add_host("impostor")
    wrong = base64.b64encode(os.urandom(32)).decode()  # any well-formed key but peer1's
    before, records = revision(n1), peer_records(n1)
    results = calls(impostor, *[(node_addr(n), "Connect", "ConnectRequest",
                                 {"peer_id": P1, "name": "peer1", "public_key": wrong}) for n in (n1, n2)],
                    (node_addr(n2), "Watch", "WatchRequest", {"peer_id": P1, "public_key": wrong}))
    assert [code for code, _ in results] == ["PERMISSION_DENIED"] * 3, results
    assert revision(n1) == before and peer_records(n1) == records
    assert all(node_has(n, p1) and wrong not in n.wg_peers() for n in (n1, n2))
    assert p1.reaches([n1, n2])


def host_files(host) -> dict[str, str]:
    """Every file a Heimdall host keeps (config, data, runtime), by path: its contents as text."""
    texts = {}
    for top in PRIVATE_DIRS:
        for root, _, files in os.walk(host.path(top)):
            for name in files:
                path = os.path.join(root, name)
                if os.path.isfile(path):  # not the sockets
                    with open(path, "rb") as f:
                        texts[path] = f.read().decode(errors="replace")
    return texts


def test_no_private_key_of_a_peer_exists_but_on_the_peer(net):
    nodes = net["nodes"]
    logs = {str(path): path.read_text(errors="replace") for path in net["logs"].iterdir()}
    for peer in net["peers"].values():
        key_file = peer.host.path("/var/lib/heimdall/wireguard.key")
        assert os.stat(key_file).st_mode & 0o777 == 0o600
        secrets = (peer.private_key, base64.b64decode(peer.private_key).hex())
        places = dict(logs)  # every daemon's log, the peer's own included
        for host in net["lab"].hosts.values():
            if host is not peer.host:
                places.update(host_files(host))
        for node in nodes:
            places[f"{node.name}'s Redis"] = node.redis_dump()
        assert any(where.endswith("wireguard.key") for where in places), "the scan missed the data dirs"
        leaks = [where for where, text in places.items() if any(secret in text for secret in secrets)]
        assert not leaks, f"{peer.name}'s private key found in {leaks}"


def test_bad_input_is_refused_end_to_end_and_changes_nothing(net):
    n1, n2 = net["nodes"]
    before = revision(n1)
    for args, field in ((("peers", "authorize", "bad id!"), "peer_id"),
                        (("peers", "authorize", "x" * 65), "peer_id"),
                        (("peers", "authorize", "laptop-9", "--public-key", "not-a-key"), "public_key"),
                        (("peers", "deauthorize", "bad/id"), "peer_id")):
        result = n2.hctl(*args)
        assert result.returncode == 1, result
        assert "INVALID_ARGUMENT" in result.stderr and field in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    unknown = n2.hctl("peers", "deauthorize", "laptop-9")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    assert n2.hctl("peers", "authorize").returncode == 2
    key = net["peers"][P1].public_key
    results = calls(net["lab"].hosts["impostor"],
                    *[(node_addr(n1), "Connect", "ConnectRequest", fields) for fields in (
                        {"peer_id": "", "name": "x", "public_key": key},
                        {"peer_id": "p" * 65, "name": "x", "public_key": key},
                        {"peer_id": "laptop-9", "name": "n" * 64, "public_key": key},
                        {"peer_id": "laptop-9", "name": "x", "public_key": "AAAA"},
                        {"peer_id": "laptop-9", "name": "x", "public_key": ""})],
                    (node_addr(n2), "Watch", "WatchRequest", {"peer_id": "bad id", "public_key": key}))
    assert [code for code, _ in results] == ["INVALID_ARGUMENT"] * 6, results
    assert revision(n1) == before


def test_the_peer_fails_over_when_its_node_dies(net):
    """node2 (a replica) dies whole, wireguard-go included; the peer moves to node1 (the master)."""
    n1, n2 = net["nodes"]
    p1 = net["peers"][P1]
    assert p1.connections()[-1] == node_addr(n2)
    before = revision(n1)
    flow = PingFlow(p1.host, n1.tunnel_address, LIVE_FLOW_SECONDS, net["logs"] / "p1-n1-failover.log").wait_answered()
    n2.host.kill_all()
    wait_until(lambda: p1.connections()[-1] == node_addr(n1), 10,
               f"the peer's control stream to move to node1\n{p1.logs()}")
    assert_no_loss([flow], "the peer's node died")
    assert revision(n1) == before, "a known peer's reconnect wrote to the state (and woke every node)"
    assert not p1.pings(n2.tunnel_address)
    # node2 comes back: its tunnels to node1 and the peer are rebuilt from its Redis (and the master).
    n2.start().wait_serving()
    wait_until(lambda: p1.reaches([n1, n2]), 30, f"the peer to reach the restarted node2\n{debug(net)}")


def test_the_peer_fails_over_when_the_master_dies(net):
    """node1 (the master) dies: Connect on node2 cannot write, and needs not (the peer is known there)."""
    n1, n2 = net["nodes"]
    p1 = net["peers"][P1]
    assert p1.connections()[-1] == node_addr(n1)
    flow = PingFlow(p1.host, n2.tunnel_address, LIVE_FLOW_SECONDS, net["logs"] / "p1-n2-failover.log").wait_answered()
    n1.host.kill_all()
    wait_until(lambda: p1.connections()[-1] == node_addr(n2), 10,
               f"the peer's control stream to move to node2\n{p1.logs()}\n{n2.logs()}")
    assert_no_loss([flow], "the master died")
    assert p1.pings(n2.tunnel_address)
