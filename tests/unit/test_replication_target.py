"""heimdall-store's choice of what its Redis replicates: the election's word, checked against the nodes."""
from heimdall.agents.store import replication_target
from heimdall.identity import Membership
from heimdall.state import MasterRecord, NodeRecord

KEY = "A" * 43 + "="
NODES = {i: NodeRecord(i, i, KEY, f"192.0.2.{n}:10100", f"10.{128 + n}.0.0/16") for n, i in enumerate(("n1", "n2", "n3"))}
JOINED = Membership("n2", "10.129.0.0/16", "n1", "10.128.0.1")  # n2 joined while n1 was master


def test_the_sentinels_choice_wins_over_the_record():
    record = MasterRecord("n1", "10.128.0.1", 1)
    assert replication_target("n2", JOINED, record, NODES, "10.130.0.1") == "10.130.0.1"
    assert replication_target("n2", JOINED, record, NODES, "10.129.0.1") == ""  # this node was elected


def test_without_a_sentinel_answer_the_record_then_the_membership_file_decide():
    assert replication_target("n2", JOINED, MasterRecord("n3", "10.130.0.1", 2), NODES, None) == "10.130.0.1"
    assert replication_target("n2", JOINED, MasterRecord("n2", "10.129.0.1", 2), NODES, None) == ""
    assert replication_target("n2", JOINED, None, {}, None) == "10.128.0.1"  # nothing replicated yet


def test_an_address_that_is_no_nodes_is_never_replicated_from():
    """The master's password goes where replication points: a sentinel steered to a stranger is not followed."""
    record = MasterRecord("n1", "10.128.0.1", 1)
    assert replication_target("n2", JOINED, record, NODES, "203.0.113.66") == "10.128.0.1"
    assert replication_target("n2", JOINED, None, {}, "203.0.113.66") == "10.128.0.1"  # no node list yet either
