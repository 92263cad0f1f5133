"""Routes on the data path and nodes leaving, with the real daemons on simulated hosts.

Three nodes and a peer; a service host sits behind node2 on a link of its own
(its default route via node2), reachable from elsewhere only through a route
published via node2. Tests run in file order on one network.
"""
import json
import time

import pytest

from heimdall.lab import Lab
from heimdall.lab.cluster import new_cluster_key, start_nodes, start_peer, stopping, wait_until
from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow, assert_no_loss
from heimdall.state import keys

pytestmark = pytest.mark.integration

PEER = "field-laptop"
SERVICE_NET = "192.168.88.0/24"
SERVICE_IP = "192.168.88.10"
NODE3_ROUTE = "192.168.99.0/24"


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    logs = tmp_path_factory.mktemp("membership-logs")
    key = new_cluster_key()
    with Lab() as lab:
        nodes = start_nodes(lab, key, logs, ("node1", "node2", "node3"))
        service = lab.add_host_behind("svc", nodes[1].host, SERVICE_NET)
        peer = start_peer(lab, "peer", PEER, nodes, logs)
        with stopping(nodes, [peer]):
            yield {"lab": lab, "logs": logs, "nodes": nodes, "peer": peer, "service": service}


def debug(net) -> str:
    return "\n".join([*(n.logs() for n in net["nodes"]), net["peer"].logs()])


def reaches_service(host_like) -> bool:
    return host_like.pings(SERVICE_IP, wait=0.5)


def test_a_published_route_is_reached_on_the_data_path_and_withdrawn(net):
    n1, n2, n3 = net["nodes"]
    peer = net["peer"]
    assert n2.pings(SERVICE_IP), "the service host is not on node2's link"
    assert not reaches_service(peer) and not reaches_service(n1), "reachable before the route was published"
    flow = PingFlow(peer.host, n3.tunnel_address, LIVE_FLOW_SECONDS, net["logs"] / "peer-n3.log").wait_answered()
    created = n1.hctl("routes", "create", "--node-id", n2.node_id, "--network", SERVICE_NET)
    assert created.returncode == 0, created.stderr
    wait_until(lambda: reaches_service(peer) and reaches_service(n1) and reaches_service(n3), 20,
               f"the service behind node2 to be reached from the peer and the other nodes\n{debug(net)}")
    assert n1.hctl("routes", "delete", SERVICE_NET).returncode == 0
    wait_until(lambda: not reaches_service(peer) and not reaches_service(n1) and not reaches_service(n3), 20,
               "the withdrawn route to be gone from the data path")
    assert_no_loss([flow], "a route was published and withdrawn")


def test_the_masters_node_and_unknown_nodes_cannot_be_removed(net):
    n1, n2, _ = net["nodes"]
    revision = n1.redis("GET", keys.REV).strip()
    refused = n2.hctl("nodes", "remove", "node1")
    assert refused.returncode != 0 and "holds the master" in refused.stderr, refused.stderr
    unknown = n2.hctl("nodes", "remove", "no-such-node")
    assert unknown.returncode != 0 and "no node no-such-node" in unknown.stderr, unknown.stderr
    garbage = n2.hctl("nodes", "remove", "node1; DEL heimdall:nodes")
    assert garbage.returncode != 0 and "INVALID_ARGUMENT" in garbage.stderr, garbage.stderr
    assert n1.redis("GET", keys.REV).strip() == revision, "a refused removal wrote to the state"


def test_a_removed_node_leaves_every_host_and_its_subnet_and_routes_are_released(net):
    n1, n2, n3 = net["nodes"]
    peer = net["peer"]
    assert n1.hctl("routes", "create", "--node-id", n3.node_id, "--network", NODE3_ROUTE).returncode == 0
    subnet, key = n3.membership()["subnet"], n3.public_key
    n3.stop()
    removed = n2.hctl("nodes", "remove", "NODE3", "--json")  # by name, in any case
    assert removed.returncode == 0, removed.stderr
    answer = json.loads(removed.stdout)
    assert answer["node"]["id"] == n3.node_id and answer["routes"] == [NODE3_ROUTE]

    def gone_everywhere() -> bool:
        return (all(key not in host.wg_peers() for host in (n1, n2, peer))
                and all("node3" not in n.hctl("nodes", "list").stdout for n in (n1, n2)))

    wait_until(gone_everywhere, 20, f"node3 to leave every WireGuard interface and node list\n{debug(net)}")
    for node in (n1, n2):
        assert subnet not in node.redis("HKEYS", keys.IPAM_NODE_SUBNETS).split()
        assert NODE3_ROUTE not in node.redis("HKEYS", keys.ROUTES).split()
        assert n3.node_id not in node.redis("SMEMBERS", keys.NODES).split()
    wait_until(lambda: all("status: NXDOMAIN" in n.host.run(["dig", f"@{n.tunnel_address}", "+time=2", "+tries=1",
                                                                 "node3.heimdall"], check=False).stdout for n in (n1, n2)),
               20, "node3's name to be gone from every node's DNS")
    # The sentinels forget node3's (it votes no more): two voters, a majority of two.
    wait_until(lambda: all(n.sentinel().get("quorum") == "2" and n.sentinel().get("num-other-sentinels") == "1"
                           for n in (n1, n2)), 30, f"the sentinels to forget node3\n{debug(net)}")

    # Started again with its old identity, it stays out (nothing of it is written back): joining again is
    # the way back. It is cut off, so it cannot even tell; its daemons run on its last state.
    n3.start()
    wait_until(lambda: "heimdall-wg: started" in n3.log("heimdall-wg").split("heimdall-wg: stopped")[-1], 30,
               f"node3's heimdall-wg to start again\n{n3.logs()}")
    time.sleep(5)  # a few heartbeats and reconcile passes of node3
    assert n3.node_id not in n1.redis("SMEMBERS", keys.NODES).split()
    assert key not in n1.wg_peers() and key not in n2.wg_peers()
    n3.stop()
