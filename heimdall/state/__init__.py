"""Heimdall's state in Redis: key names, typed records, atomic writes, snapshots, events.

The Redis-backed names (State, its errors, Event) load redis-py on first use, so
code that only needs records and pools (a peer host) does not pay for it.
"""
from heimdall.state.ipam import Pool
from heimdall.state.records import MasterRecord, NodeRecord, PeerRecord, RecordError, Snapshot

_STORE_NAMES = frozenset({"Denied", "Event", "NotReplicated", "PoolExhausted", "State", "StateError"})

__all__ = ["MasterRecord", "NodeRecord", "PeerRecord", "Pool", "RecordError", "Snapshot", *sorted(_STORE_NAMES)]


def __getattr__(name: str):
    if name in _STORE_NAMES:
        from heimdall.state import store

        return getattr(store, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
