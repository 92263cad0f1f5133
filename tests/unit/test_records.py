"""Records round-trip through their Redis hash form and refuse incomplete data."""
import pytest

from heimdall.state import NodeRecord, RecordError, Snapshot
from heimdall.state.records import MasterRecord


def node(**over):
    fields = dict(id="n1", name="gw1", public_key="k", endpoint="192.0.2.1:10100", subnet="10.128.0.0/16",
                  grpc_address="tcp://192.0.2.1:9000", joined_at=5)
    fields.update(over)
    return NodeRecord(**fields)


def test_node_round_trip_and_derived_tunnel_address():
    record = node()
    assert NodeRecord.from_hash(record.to_hash()) == record
    assert record.tunnel_address == "10.128.0.1"


def test_unknown_fields_are_ignored_missing_required_ones_refused():
    data = node().to_hash() | {"future": "x"}
    assert NodeRecord.from_hash(data) == node()
    del data["public_key"]
    with pytest.raises(RecordError, match="public_key"):
        NodeRecord.from_hash(data)


def test_integer_fields_are_checked():
    with pytest.raises(RecordError, match="epoch"):
        MasterRecord.from_hash({"node_id": "n1", "address": "10.128.0.1", "epoch": "soon"})


def test_oldest_first_orders_by_join_time_then_id():
    snap = Snapshot(nodes={n.id: n for n in (node(id="b", joined_at=1), node(id="a", joined_at=1),
                                             node(id="c", joined_at=0))})
    assert [n.id for n in snap.oldest_first()] == ["c", "a", "b"]
