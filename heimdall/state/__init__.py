"""Heimdall's state in Redis: key names, typed records, atomic writes, snapshots, events."""
from heimdall.state.ipam import Pool
from heimdall.state.records import MasterRecord, NodeRecord, PeerRecord, RecordError, Snapshot
from heimdall.state.store import Denied, Event, PoolExhausted, State, StateError

__all__ = ["Denied", "Event", "MasterRecord", "NodeRecord", "PeerRecord", "Pool", "PoolExhausted", "RecordError",
           "Snapshot", "State", "StateError"]
