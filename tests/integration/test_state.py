"""The state layer against real redis-server processes (a master and a replica)."""
import asyncio
import ipaddress

import pytest
import redis.asyncio as aioredis

from heimdall.state import Denied, Pool, PoolExhausted, State, keys
from heimdall.state.records import MasterRecord
from tests.support.redis_servers import PASSWORD

pytestmark = pytest.mark.integration

NODE_POOL = Pool(ipaddress.ip_network("10.128.0.0/11"), 16)  # 32 subnets
PEER_POOL = Pool(ipaddress.ip_network("10.51.0.0/24"))
KEY_A = "A" * 43 + "="
KEY_B = "B" * 43 + "="


def client(config) -> aioredis.Redis:
    return aioredis.Redis(port=config.port, password=PASSWORD, decode_responses=True)


async def join(state: State, node_id: str, pool: Pool = NODE_POOL):
    return await state.upsert_node(node_id, name=node_id, public_key=KEY_A, endpoint="192.0.2.1:10100",
                                   grpc_address="tcp://192.0.2.1:9000", pool=pool)


def test_concurrent_joins_from_many_clients_never_share_a_subnet(redis_servers):
    master = redis_servers.start()

    async def scenario():
        clients = [client(master) for _ in range(NODE_POOL.count + 4)]
        results = await asyncio.gather(*(join(State(c), f"node-{i}") for i, c in enumerate(clients)),
                                       return_exceptions=True)
        records = [r for r in results if not isinstance(r, Exception)]
        refused = [r for r in results if isinstance(r, Exception)]
        snapshot = await State(clients[0]).snapshot()
        for c in clients:
            await c.aclose()
        return records, refused, snapshot

    records, refused, snapshot = asyncio.run(scenario())
    subnets = [r.subnet for r in records]
    assert len(records) == NODE_POOL.count and len(set(subnets)) == len(subnets)
    assert all(ipaddress.ip_network(s).subnet_of(NODE_POOL.network) for s in subnets)
    assert len(refused) == 4 and all(isinstance(e, PoolExhausted) for e in refused)
    assert set(snapshot.nodes) == {r.id for r in records}  # the refused left nothing behind
    assert snapshot.rev == NODE_POOL.count


def test_concurrent_peer_connects_get_distinct_addresses(redis_servers):
    master = redis_servers.start()

    async def scenario():
        clients = [client(master) for _ in range(40)]
        state = State(clients[0])
        for i in range(40):
            await state.authorize_peer(f"peer-{i}")
        peers = await asyncio.gather(*(State(c).connect_peer(f"peer-{i}", name=f"p{i}", public_key=KEY_A,
                                                                pool=PEER_POOL) for i, c in enumerate(clients)))
        for c in clients:
            await c.aclose()
        return peers

    addresses = [p.address for p in asyncio.run(scenario())]
    assert len(set(addresses)) == 40 and "10.51.0.0" not in addresses


def test_rejoin_keeps_subnet_and_join_time(redis_servers):
    master = redis_servers.start()

    async def scenario():
        async with client(master) as c:
            state = State(c)
            first = await state.upsert_node("n1", name="gw1", public_key=KEY_A, endpoint="192.0.2.1:10100",
                                            grpc_address="", pool=NODE_POOL, now=100)
            await join(state, "n2")
            again = await state.upsert_node("n1", name="gw1", public_key=KEY_B, endpoint="192.0.2.9:10100",
                                            grpc_address="", pool=NODE_POOL, now=200)
            return first, again

    first, again = asyncio.run(scenario())
    assert again.subnet == first.subnet == "10.128.0.0/16"
    assert again.joined_at == 100 and again.public_key == KEY_B and again.endpoint == "192.0.2.9:10100"


def test_peer_authorization_binds_the_first_key_and_refusals_write_nothing(redis_servers):
    master = redis_servers.start()

    async def scenario():
        async with client(master) as c:
            state = State(c)
            with pytest.raises(Denied, match="not authorized"):
                await state.connect_peer("laptop", name="laptop", public_key=KEY_A, pool=PEER_POOL)
            rev_after_refusal = await state.revision()
            await state.authorize_peer("laptop")
            first = await state.connect_peer("laptop", name="laptop", public_key=KEY_A, pool=PEER_POOL)
            with pytest.raises(Denied):
                await state.connect_peer("laptop", name="laptop", public_key=KEY_B, pool=PEER_POOL)
            again = await state.connect_peer("laptop", name="laptop", public_key=KEY_A, pool=PEER_POOL)
            await state.authorize_peer("pinned", KEY_B)
            with pytest.raises(Denied):
                await state.connect_peer("pinned", name="pinned", public_key=KEY_A, pool=PEER_POOL)
            await state.deauthorize_peer("laptop")
            snap = await state.snapshot()
            ipam = await c.hgetall(keys.IPAM_PEER_ADDRESSES)
            return rev_after_refusal, first, again, snap, ipam

    rev, first, again, snap, ipam = asyncio.run(scenario())
    assert rev == 0
    assert first.address == again.address == "10.51.0.1"
    assert "laptop" not in snap.peers and "laptop" not in snap.authorized
    assert snap.authorized == {"pinned": KEY_B} and "pinned" not in snap.peers
    assert ipam == {}  # the deauthorized peer's address is free again


def test_replica_reads_snapshots_and_hears_every_event_in_order(redis_servers):
    master = redis_servers.start()
    replica = redis_servers.start(replica_of=master)

    async def scenario():
        async with client(master) as w, client(replica) as r:
            state = State(r, w)
            events = []

            async def listen():
                async for event in state.events():
                    events.append(event)
                    if len(events) == 3:
                        return

            listener = asyncio.create_task(listen())
            while (await r.pubsub_numsub(keys.EVENTS))[0][1] == 0:  # until the listener is subscribed
                await asyncio.sleep(0.01)
            await join(state, "n1")
            await state.create_route("10.200.0.0/24", "n1")
            assert await state.elect_master("n1", "10.128.0.1") == MasterRecord("n1", "10.128.0.1", 1)
            await asyncio.wait_for(listener, 5)
            with pytest.raises(Denied, match="no node"):
                await state.create_route("10.201.0.0/24", "ghost")
            return events, await state.snapshot()

    events, snap = asyncio.run(scenario())
    assert [(e.rev, e.kind, e.id) for e in events] == [(1, "node", "n1"), (2, "route", "10.200.0.0/24"),
                                                     (3, "master", "n1")]
    assert snap.rev == 3 and snap.routes == {"10.200.0.0/24": "n1"}
    assert snap.master == MasterRecord("n1", "10.128.0.1", 1)
    assert snap.nodes["n1"].tunnel_address == "10.128.0.1"


def test_handshake_reports_replace_the_previous_ones_without_an_event(redis_servers):
    master = redis_servers.start()

    async def scenario():
        async with client(master) as c:
            state = State(c)
            await join(state, "n1")
            rev = await state.revision()
            await state.report_handshakes("n1", {KEY_A: 100, KEY_B: 200})
            await state.report_handshakes("n1", {KEY_B: 300})
            return rev, await state.snapshot()

    rev, snap = asyncio.run(scenario())
    assert snap.handshakes == {"n1": {KEY_B: 300}} and snap.rev == rev
