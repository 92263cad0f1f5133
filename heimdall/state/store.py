"""Reads and writes of the network's state in Redis.

Reads go to the node's local Redis (a replica: fast, and still answering when
the master is away); writes go to the master. Every write is one atomic
script (write.lua) that checks its guards, allocates if asked, applies its
operations, bumps ``heimdall:rev`` and publishes one event, so a subscriber on
any replica learns of every change in order and can compare revisions.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from importlib import resources
from typing import AsyncIterator, Iterable

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from heimdall.state import keys
from heimdall.state.ipam import Pool
from heimdall.state.records import MasterRecord, NodeRecord, PeerRecord, RecordError, Snapshot

log = logging.getLogger(__name__)


class StateError(Exception):
    """A state operation failed."""


class Denied(StateError):
    """A write's precondition does not hold (e.g. the peer is not authorized)."""


class PoolExhausted(StateError):
    """No free subnet or address is left in the pool."""


class NotReplicated(StateError):
    """The master applied a write but no replica acknowledged it in time: it may be lost in a failover,
    so it is not reported as done (the caller may retry; every write is idempotent)."""


REPLICA_ACK_TIMEOUT_MS = 2000  # how long a write waits for its replicas (they acknowledge in milliseconds)


@dataclass(frozen=True)
class Event:
    """One change notice from the events channel."""

    rev: int
    kind: str
    id: str

    @classmethod
    def parse(cls, data: str | bytes) -> Event | None:
        """The event in a channel message; None (and a debug line) if it is not one of ours."""
        try:
            fields = json.loads(data)
            return cls(int(fields["rev"]), str(fields["kind"]), str(fields.get("id", "")))
        except (ValueError, TypeError, KeyError):
            log.debug("ignoring malformed event %r", data)
            return None


def _script(name: str) -> str:
    return resources.files("heimdall.state").joinpath(name).read_text()


def _pairs(flat: list) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2]))


def _timestamps(flat: list) -> dict[str, int]:
    """A hash of unix times; values that are not numbers are dropped."""
    return {k: int(float(v)) for k, v in _pairs(flat).items() if v.replace(".", "", 1).isdigit()}


def _record_or_none(cls, fields: dict[str, str], what: str):
    if not fields:
        return None
    try:
        return cls.from_hash(fields)
    except RecordError as exc:
        log.warning("ignoring malformed %s record: %s", what, exc)
        return None


def _records(cls, rows: list, what: str) -> dict:
    found = {}
    for row in rows:
        try:
            record = cls.from_hash(_pairs(row))
        except RecordError as exc:  # one bad record must not hide the rest
            log.warning("skipping malformed %s record: %s", what, exc)
            continue
        found[record.id] = record
    return found


class State:
    """The state layer over a reader (local Redis) and a writer (the master)."""

    def __init__(self, reader: aioredis.Redis, writer: aioredis.Redis | None = None) -> None:
        self.reader = reader
        self.writer = writer or reader
        self._write_script = self.writer.register_script(_script("write.lua"))
        self._master_script = self.writer.register_script(_script("master.lua"))
        self._snapshot_script = self.reader.register_script(_script("snapshot.lua"))

    def with_writer(self, writer: aioredis.Redis) -> State:
        """The same reader with another master (after a change of master)."""
        return State(self.reader, writer)

    # -- reads --------------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        rev, nodes, peers, authorized, routes, master, seen, handshakes = await self._snapshot_script(keys=[
            keys.REV, keys.NODES, keys.PEERS, keys.AUTHORIZED, keys.ROUTES, keys.MASTER, keys.SEEN,
            keys.node(""), keys.peer(""), keys.handshakes(""),
        ])
        master_record = _record_or_none(MasterRecord, _pairs(master), "master")
        return Snapshot(
            rev=int(rev),
            nodes=_records(NodeRecord, nodes, "node"),
            peers=_records(PeerRecord, peers, "peer"),
            authorized=_pairs(authorized),
            routes=_pairs(routes),
            master=master_record,
            seen=_timestamps(seen),
            handshakes={node_id: _timestamps(flat) for node_id, flat in handshakes if flat},
        )

    async def node(self, node_id: str) -> NodeRecord | None:
        """One node's record (None if unknown or malformed)."""
        return _record_or_none(NodeRecord, await self.reader.hgetall(keys.node(node_id)), "node")

    async def nodes(self) -> dict[str, NodeRecord]:
        """Every node's record (malformed ones left out), without reading the rest of the state."""
        ids = sorted(await self.reader.smembers(keys.NODES))
        async with self.reader.pipeline(transaction=False) as pipe:
            for node_id in ids:
                pipe.hgetall(keys.node(node_id))
            rows = await pipe.execute()
        records = (_record_or_none(NodeRecord, row, "node") for row in rows)
        return {record.id: record for record in records if record is not None}

    async def witnesses(self) -> dict[str, str]:
        """Witness id -> its sentinel's address: voters in elections besides the nodes."""
        return await self.reader.hgetall(keys.WITNESSES)

    async def master(self) -> MasterRecord | None:
        return _record_or_none(MasterRecord, await self.reader.hgetall(keys.MASTER), "master")

    async def revision(self) -> int:
        return int(await self.reader.get(keys.REV) or 0)

    async def events(self) -> AsyncIterator[Event]:
        """Change events, as the local Redis receives them; ends when the connection does."""
        pubsub = self.reader.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(keys.EVENTS)
        try:
            async for message in pubsub.listen():
                event = Event.parse(message["data"])
                if event is not None:
                    yield event
        finally:
            await pubsub.aclose()

    # -- writes -------------------------------------------------------------------------------
    async def _write(self, kind: str, id_: str, ops: Iterable[list], *, guards: Iterable[dict] = (),
                     alloc: dict | None = None, release: Iterable[dict] = ()) -> tuple[int, str]:
        request = {"kind": kind, "id": id_, "ops": [list(map(str, op)) for op in ops],
                   "guards": list(guards), "release": list(release)}
        if alloc:
            request["alloc"] = alloc
        # cjson turns empty tables into objects; make empty lists absent instead.
        request = {k: v for k, v in request.items() if v != []}
        # One connection for the script and its WAIT: WAIT counts the replicas holding this connection's writes.
        async with self.writer.client() as connection:
            try:
                rev, allocation, good_replicas = await self._write_script(
                    keys=[keys.REV, keys.EVENTS], args=[json.dumps(request)], client=connection)
            except ResponseError as exc:
                text = str(exc)
                if text.startswith("DENIED "):
                    raise Denied(text[len("DENIED "):]) from None
                if text.startswith("FULL "):
                    raise PoolExhausted(text[len("FULL "):]) from None
                raise StateError(f"{kind} {id_}: {text}") from None
            # No good replica: a cluster of one node, or a Redis run by its owner (--redis-url). A node of a
            # larger cluster never gets here without one: min-replicas-to-write refused the script.
            if int(good_replicas):
                await _wait_for_replicas(connection, int(good_replicas), f"{kind} {id_}")
        return int(rev), allocation

    async def upsert_node(self, node_id: str, *, name: str, public_key: str, endpoint: str,
                          grpc_address: str, pool: Pool, now: float | None = None) -> NodeRecord:
        """Register a node, or update a known one; it keeps its subnet and join time."""
        key = keys.node(node_id)
        _, subnet = await self._write("node", node_id, [
            ["HSET", key, "id", node_id, "name", name, "public_key", public_key, "endpoint", endpoint,
             "grpc_address", grpc_address, "subnet", "$alloc"],
            ["HSETNX", key, "joined_at", int(time.time() if now is None else now)],
            ["SADD", keys.NODES, node_id],
        ], alloc=pool.script_spec(keys.IPAM_NODE_SUBNETS, node_id, key, "subnet"))
        record = NodeRecord.from_hash(await self.writer.hgetall(key))
        assert record.subnet == subnet
        return record

    async def remove_node(self, node_id: str) -> list[str]:
        """Take a node out: its record, subnet (back to the pool), routes, liveness. Refused (Denied) while
        it is unknown or holds the master. Returns the routes withdrawn with it."""
        key = keys.node(node_id)
        routes = sorted(network for network, via in (await self.writer.hgetall(keys.ROUTES)).items() if via == node_id)
        await self._write("remove-node", node_id, [
            ["DEL", key, keys.handshakes(node_id)], ["SREM", keys.NODES, node_id], ["HDEL", keys.SEEN, node_id],
            *(["HDEL", keys.ROUTES, network] for network in routes),
        ], guards=[
            {"key": key, "field": "id", "allowed": [node_id], "error": f"no node {node_id}"},
            {"key": keys.MASTER, "field": "node_id", "forbidden": [node_id],
             "error": f"node {node_id} holds the master: stop it so that another node is elected, then remove it"},
        ], release=[{"hash": keys.IPAM_NODE_SUBNETS, "owner_key": key, "owner_field": "subnet"}])
        return routes

    async def heartbeat(self, node_id: str, now: float | None = None) -> None:
        """Liveness only: not a change of state, so no revision bump and no event."""
        await self.writer.hset(keys.SEEN, node_id, int(time.time() if now is None else now))

    async def report_handshakes(self, node_id: str, latest: dict[str, int]) -> None:
        """Replace this node's handshake times (public key -> unix seconds); liveness, so no event."""
        key = keys.handshakes(node_id)
        async with self.writer.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            if latest:
                pipe.hset(key, mapping=latest)
            await pipe.execute()

    async def authorize_peer(self, peer_id: str, public_key: str = "") -> None:
        """Allow ``peer_id`` (pinned to ``public_key`` if given). Re-authorizing changes the pin."""
        await self._write("authorize", peer_id, [["HSET", keys.AUTHORIZED, peer_id, public_key]])

    async def deauthorize_peer(self, peer_id: str) -> None:
        """Withdraw the authorization and forget the peer (its address goes back to the pool)."""
        key = keys.peer(peer_id)
        await self._write("deauthorize", peer_id, [
            ["HDEL", keys.AUTHORIZED, peer_id], ["DEL", key], ["SREM", keys.PEERS, peer_id],
        ], release=[{"hash": keys.IPAM_PEER_ADDRESSES, "owner_key": key, "owner_field": "address"}])

    async def connect_peer(self, peer_id: str, *, name: str, public_key: str, pool: Pool,
                           now: float | None = None) -> PeerRecord:
        """Register an authorized peer's key and give it an address.

        Refused (Denied) unless the peer is authorized and ``public_key`` is its
        pinned key; an unpinned authorization is bound to the first key presented.
        """
        key = keys.peer(peer_id)
        await self._write("peer", peer_id, [
            ["HSET", keys.AUTHORIZED, peer_id, public_key],
            ["HSET", key, "id", peer_id, "name", name, "public_key", public_key, "address", "$alloc",
             "connected_at", int(time.time() if now is None else now)],
            ["SADD", keys.PEERS, peer_id],
        ], guards=[
            {"key": keys.AUTHORIZED, "field": peer_id, "allowed": [public_key, ""],
             "error": f"peer {peer_id} is not authorized, or is authorized with another public key"},
        ], alloc=pool.script_spec(keys.IPAM_PEER_ADDRESSES, peer_id, key, "address"))
        return PeerRecord.from_hash(await self.writer.hgetall(key))

    async def create_route(self, network: str, node_id: str) -> None:
        await self._write("route", network, [["HSET", keys.ROUTES, network, node_id]], guards=[
            {"key": keys.node(node_id), "field": "id", "allowed": [node_id], "error": f"no node {node_id}"}])

    async def delete_route(self, network: str) -> bool:
        existed = await self.writer.hexists(keys.ROUTES, network)
        if existed:
            await self._write("route", network, [["HDEL", keys.ROUTES, network]])
        return bool(existed)

    async def register_witness(self, witness_id: str, address: str) -> None:
        await self._write("witness", witness_id, [["HSET", keys.WITNESSES, witness_id, address]])

    async def elect_master(self, node_id: str, address: str) -> MasterRecord:
        """Name ``node_id`` (its Redis at ``address``) master in the writer's Redis; the epoch goes up by one
        if that changes the record (heimdall-elector, after Sentinel promoted that Redis)."""
        epoch = await self._master_script(keys=[keys.MASTER, keys.REV, keys.EVENTS], args=[node_id, address])
        return MasterRecord(node_id, address, int(epoch))


async def _wait_for_replicas(connection: aioredis.Redis, good_replicas: int, what: str) -> None:
    """Return once every good replica holds the connection's last write.

    Every one, not just one: Sentinel promotes by replica-priority first (the oldest node), so the
    replica it picks must already hold every acknowledged write.
    """
    wanted = good_replicas
    acknowledged = await connection.wait(wanted, REPLICA_ACK_TIMEOUT_MS)
    if acknowledged < wanted:
        raise NotReplicated(f"{what}: {acknowledged} of {wanted} replicas acknowledged the write within "
                            f"{REPLICA_ACK_TIMEOUT_MS} ms; try again")
