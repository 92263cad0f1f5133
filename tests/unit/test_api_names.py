"""Names are trustworthy: a node's name is its own, among nodes and peers alike."""
from heimdall.api.server import name_conflict
from heimdall.state.records import NodeRecord, PeerRecord, Snapshot

K = "A" * 43 + "="
SNAP = Snapshot(nodes={"n1": NodeRecord("n1", "router", K, "192.0.2.1:10100", "10.128.0.0/16")},
                peers={"p1": PeerRecord("p1", "laptop", K, "10.51.0.1"), "p2": PeerRecord("p2", "old", K, "10.51.0.2")},
                authorized={"p1": K})


def test_a_node_name_is_unique_among_nodes():
    assert "node n1" in name_conflict(SNAP, "Router", node_id="n2")
    assert name_conflict(SNAP, "router", node_id="n1") is None  # a node rejoining keeps its name
    assert name_conflict(SNAP, "gw2", node_id="n2") is None


def test_no_peer_takes_a_node_name_and_no_node_a_peer_name():
    assert "node n1" in name_conflict(SNAP, "ROUTER", peer_id="p3")
    assert "peer p1" in name_conflict(SNAP, "laptop", node_id="n2")
    assert name_conflict(SNAP, "old", node_id="n2") is None  # a deauthorized peer's name is free


def test_peers_may_share_a_name():
    assert name_conflict(SNAP, "laptop", peer_id="p3") is None
