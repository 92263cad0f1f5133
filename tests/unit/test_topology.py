"""Desired WireGuard state derived from a snapshot."""
from dataclasses import replace

from heimdall.state.records import MasterRecord, NodeRecord, PeerRecord, Snapshot
from heimdall.topology import node_desired, peer_hub, peer_view

K = {n: (chr(ord("A") + n) * 43)[:43] + "=" for n in range(6)}


def node(i, subnet, joined_at=0):
    return NodeRecord(id=f"n{i}", name=f"gw{i}", public_key=K[i], endpoint=f"192.0.2.{i}:10100", subnet=subnet,
                      grpc_address=f"tcp://192.0.2.{i}:9000", joined_at=joined_at)


SNAP = Snapshot(
    rev=7,
    nodes={"n1": node(1, "10.128.0.0/16", 1), "n2": node(2, "10.129.0.0/16", 2), "n3": node(3, "10.130.0.0/16", 3)},
    peers={"p4": PeerRecord("p4", "laptop", K[4], "10.51.0.1"), "p5": PeerRecord("p5", "old", K[5], "10.51.0.2")},
    authorized={"p4": K[4]},  # p5 was deauthorized but its record lingers
    routes={"10.200.0.0/24": "n2"},
)


def test_node_gets_every_other_node_with_its_routes_and_authorized_peers_only():
    desired = node_desired(SNAP, "n1", K[1], "10.51.0.0/16")
    assert desired.addresses == {"10.128.0.1/32"}
    assert set(desired.peers) == {K[2], K[3], K[4]}
    assert desired.peers[K[2]].allowed_ips == ("10.129.0.0/16", "10.200.0.0/24")
    assert desired.peers[K[2]].endpoint == "192.0.2.2:10100"
    assert desired.peers[K[4]].allowed_ips == ("10.51.0.1/32",) and desired.peers[K[4]].endpoint is None
    assert desired.routes == {"10.129.0.0/16", "10.200.0.0/24", "10.130.0.0/16", "10.51.0.0/16"}


def test_malformed_records_are_skipped_not_fatal():
    bad = node(0, "not-a-subnet")
    snap = Snapshot(nodes={**SNAP.nodes, "n0": bad}, routes={"garbage": "n2"})
    desired = node_desired(snap, "n1", K[1], "10.51.0.0/16")
    assert K[0] not in desired.peers and "garbage" not in desired.routes


def test_node_unknown_to_the_snapshot_has_no_address_yet():
    assert node_desired(Snapshot(), "n9", K[1], "10.51.0.0/16").addresses == frozenset()


def test_peer_view_reaches_every_node_and_the_peer_network_through_the_master_only():
    snap = replace(SNAP, master=MasterRecord("n2", "10.129.0.1", 1))
    view = peer_view(snap, "p4", "10.51.0.0/16", allow_peer_to_peer=True)
    assert view.address == "10.51.0.1/32"
    assert view.peers[K[2]].allowed_ips == ("10.129.0.0/16", "10.200.0.0/24", "10.51.0.0/16")
    assert view.peers[K[1]].allowed_ips == ("10.128.0.0/16",)
    assert all(p.persistent_keepalive == 25 for p in view.peers.values())
    assert view.dns_servers == ("10.128.0.1", "10.129.0.1", "10.130.0.1")
    assert peer_view(snap, "p4", "10.51.0.0/16", False).peers[K[2]].allowed_ips == (
        "10.129.0.0/16", "10.200.0.0/24")


def test_every_peer_uses_one_hub_the_master_else_the_oldest_node():
    assert peer_hub(replace(SNAP, master=MasterRecord("n3", "10.130.0.1", 4))) == "n3"
    assert peer_hub(SNAP) == "n1"  # no master record
    assert peer_hub(replace(SNAP, master=MasterRecord("gone", "10.1.0.1", 2))) == "n1"
    assert peer_hub(Snapshot()) is None


def test_deauthorized_or_unknown_peer_has_no_view():
    assert peer_view(SNAP, "p5", "10.51.0.0/16", False) is None
    assert peer_view(SNAP, "nobody", "10.51.0.0/16", False) is None


def test_an_ipv6_route_in_the_state_does_not_break_the_ipv4_peer_network_check():
    snap = Snapshot(nodes=SNAP.nodes, routes={"fd00:200::/64": "n2"})
    desired = node_desired(snap, "n1", K[1], "10.51.0.0/16")
    assert "fd00:200::/64" in desired.routes and "fd00:200::/64" in desired.peers[K[2]].allowed_ips
