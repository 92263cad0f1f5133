"""heimdall-api against real redis-server processes and real gRPC over loopback and a unix socket.

Each test runs the real daemon class in-process (start() waits for membership,
authorizes configured peers, binds the TCP port and the operator socket) and
talks to it with the real client; every refusal is checked to have written
nothing by comparing the state revision before and after.
"""
import asyncio
import ipaddress
import os
import stat
import subprocess
import time
from contextlib import asynccontextmanager

import grpc
import pytest
import redis.asyncio as aioredis

from heimdall import settings
from heimdall.api import auth, client
from heimdall.state.feed import SnapshotFeed
from heimdall.api.server import MAX_MESSAGE_SIZE, ApiServer, HeimdallService
from heimdall.api.v1 import heimdall_pb2 as pb
from heimdall.api.v1 import heimdall_pb2_grpc
from heimdall.programs.api import STOP_GRACE, ApiDaemon
from heimdall.redis_server import redis_server_binary
from heimdall.state import Pool, State
from heimdall.wg import keys
from tests.support.redis_servers import PASSWORD, free_port

pytestmark = pytest.mark.integration

CLUSTER_KEY = "integration-test-cluster-key"
NODE_ID = "node-1"
PUSH_DEADLINE = 10.0  # seconds: generous; how fast changes arrive is measured by `python -m bench peers`


def new_key() -> str:
    return keys.public_key(keys.generate_private_key())


NODE_KEY = new_key()


def api_config(redis_config, tmp_path, *extra: str) -> settings.Config:
    config, _ = settings.load("heimdall-api", [
        "--config", str(write_empty_config(tmp_path)), "--id", NODE_ID, "--name", "gw1",
        "--data-dir", str(tmp_path / "data"), "--cluster-key", CLUSTER_KEY,
        "--redis-url", f"redis://:{PASSWORD}@127.0.0.1:{redis_config.port}/0",
        "--addr", f"tcp://127.0.0.1:{free_port()}", "--operator-socket", str(tmp_path / "run" / "api.sock"),
        "--node-network", "10.128.0.0/12", "--peer-network", "10.51.0.0/24", *extra])
    return config


def write_empty_config(tmp_path):
    path = tmp_path / "heimdall.conf"  # keeps the host's /etc/heimdall out of the test
    path.write_text("")
    return path


async def make_member(state: State, config: settings.Config, node_id: str = NODE_ID) -> None:
    """What heimdall-wg does when bootstrapping: the node's record, and the master record."""
    record = await state.upsert_node(node_id, name="gw1", public_key=NODE_KEY, endpoint="192.0.2.1:10100",
                                     grpc_address=config.addr, pool=Pool(config.node_network, config.node_subnet_prefix))
    await state.elect_master(node_id, record.tunnel_address)


class Node:
    """A running in-process heimdall-api, its addresses, and a direct line to its Redis."""

    def __init__(self, daemon: ApiDaemon, state: State) -> None:
        self.daemon = daemon
        self.state = state
        self.tcp = f"tcp://127.0.0.1:{daemon.server.port}"
        self.unix = f"unix://{daemon.config.operator_socket}"

    async def rev(self) -> int:
        return await self.state.revision()

    async def refusal(self, call) -> grpc.aio.AioRpcError:
        """The error ``call`` fails with, once checked that it changed nothing."""
        before = await self.rev()
        error = await refused(call)
        assert await self.rev() == before, f"refused with {error.code().name}, yet the state changed"
        return error

    async def call(self, address: str, method: str, request, *, cluster_key: bytes | None = None,
                   tls: client.TlsOptions | None = None):
        async with client.dial(address, tls, cluster_key=cluster_key) as channel:
            return await getattr(heimdall_pb2_grpc.HeimdallStub(channel), method)(request, timeout=5)

    async def operator(self, method: str, request):
        return await self.call(self.unix, method, request)


@asynccontextmanager
async def running(redis_config, tmp_path, *extra: str, member: bool = True):
    config = api_config(redis_config, tmp_path, *extra)
    redis = aioredis.Redis(port=redis_config.port, password=PASSWORD, decode_responses=True)
    state = State(redis)
    if member:
        await make_member(state, config)
    daemon = ApiDaemon(config)
    try:
        await asyncio.wait_for(daemon.start(), 10)
        yield Node(daemon, state)
    finally:
        await daemon.shutdown()
        await redis.aclose()


async def refused(awaitable) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await awaitable
    return caught.value


# -- start ----------------------------------------------------------------------------------------
def test_serves_only_once_the_node_is_a_member_and_authorizes_configured_peers(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        config = api_config(redis_config, tmp_path, "--authorized-peer", "laptop-1", "--authorized-peer", "ci-2")
        async with aioredis.Redis(port=redis_config.port, password=PASSWORD, decode_responses=True) as redis:
            daemon = ApiDaemon(config)
            starting = asyncio.ensure_future(daemon.start())
            try:
                await asyncio.sleep(0.5)
                assert not starting.done()
                assert not config.operator_socket.exists()  # not listening before membership
                await make_member(State(redis), config)
                await asyncio.wait_for(starting, 5)
                node = Node(daemon, State(redis))
                answer = await node.operator("AuthorizedPeers", pb.AuthorizedPeersRequest())
                status = await node.operator("Status", pb.StatusRequest())
            finally:
                starting.cancel()
                await daemon.shutdown()
        return answer, status

    answer, status = asyncio.run(scenario())
    assert {p.peer_id for p in answer.peers} == {"laptop-1", "ci-2"}
    assert status.node_id == NODE_ID and status.name == "gw1" and status.master.node_id == NODE_ID
    assert status.revision >= 3


def test_operator_socket_is_root_only_and_removed_on_stop(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            mode = os.stat(node.daemon.config.operator_socket)
            return node.daemon.config.operator_socket, mode

    path, mode = asyncio.run(scenario())
    assert stat.S_ISSOCK(mode.st_mode) and stat.S_IMODE(mode.st_mode) == 0o600 and mode.st_uid == 0
    assert not path.exists()


# -- join -----------------------------------------------------------------------------------------
def join_request(key: str = CLUSTER_KEY, **fields) -> pb.JoinRequest:
    values = dict(node_id="node-2", name="gw2", public_key=new_key(), endpoint="192.0.2.2:10100",
                  grpc_address="tcp://192.0.2.2:9000") | fields
    request = pb.JoinRequest(**values)
    auth.sign_join(key.encode(), request)
    return request


def test_join_with_the_cluster_key_gets_a_subnet_and_the_cluster(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            answer = await client.join(node.tcp, CLUSTER_KEY.encode(), node_id="node-2", name="gw2",
                                       public_key=new_key(), endpoint="192.0.2.2:10100",
                                       grpc_address="192.0.2.2:9000")
            return answer, await node.state.snapshot()

    answer, snapshot = asyncio.run(scenario())
    subnet = ipaddress.ip_network(answer.subnet)
    assert subnet.prefixlen == 16 and subnet.subnet_of(ipaddress.ip_network("10.128.0.0/12"))
    assert answer.tunnel_address == str(subnet[1])
    assert answer.master.node_id == NODE_ID and answer.master.epoch == 1
    assert [n.id for n in answer.nodes] == [NODE_ID, "node-2"]
    assert snapshot.nodes["node-2"].subnet == answer.subnet
    assert snapshot.nodes["node-2"].grpc_address == "tcp://192.0.2.2:9000"  # normalized


@pytest.mark.parametrize("case, code, text", [
    ("wrong cluster key", grpc.StatusCode.UNAUTHENTICATED, "wrong cluster key"),
    ("altered after signing", grpc.StatusCode.UNAUTHENTICATED, "altered request"),
    ("bad endpoint", grpc.StatusCode.INVALID_ARGUMENT, "endpoint"),
    ("oversized name", grpc.StatusCode.INVALID_ARGUMENT, "name: too long"),
    ("bad public key", grpc.StatusCode.INVALID_ARGUMENT, "public_key"),
    ("stale timestamp", grpc.StatusCode.UNAUTHENTICATED, "timestamp"),
])
def test_refused_joins_write_nothing(redis_servers, tmp_path, case, code, text):
    requests = {
        "wrong cluster key": lambda: join_request(key="some other cluster key!"),
        "altered after signing": lambda: _altered(join_request()),
        "bad endpoint": lambda: join_request(endpoint="0.0.0.0:10100"),
        "oversized name": lambda: join_request(name="x" * 5000),
        "bad public key": lambda: join_request(public_key="not-a-key"),
        "stale timestamp": lambda: _stale(join_request()),
    }
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            error = await node.refusal(node.call(node.tcp, "Join", requests[case]()))
            return error, await node.state.snapshot()

    error, snapshot = asyncio.run(scenario())
    assert error.code() == code and text in error.details()
    assert set(snapshot.nodes) == {NODE_ID}


def _altered(request: pb.JoinRequest) -> pb.JoinRequest:
    request.endpoint = "192.0.2.66:10100"
    return request


def _stale(request: pb.JoinRequest) -> pb.JoinRequest:
    request.timestamp -= 3600
    return request


def test_a_replayed_join_is_refused(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            request = join_request()
            await node.call(node.tcp, "Join", request)
            return await node.refusal(node.call(node.tcp, "Join", request))

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED and "replayed" in error.details()


def test_garbage_and_oversized_requests_are_refused_and_the_server_stays_up(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            before = await node.rev()
            async with client.dial(node.tcp) as channel:
                raw_join = channel.unary_unary("/heimdall.v1.Heimdall/Join")  # bytes in, bytes out
                garbage = await node.refusal(raw_join(b"\xff\xff\xff\xff\x0f" + os.urandom(64), timeout=5))
                bad_utf8 = await node.refusal(raw_join(b"\x0a\x02\xc3\x28", timeout=5))  # node_id: bad UTF-8
                huge = await node.refusal(raw_join(b"\x12" + _varint(MAX_MESSAGE_SIZE) + b"x" * MAX_MESSAGE_SIZE,
                                                   timeout=5))
            # Not HTTP/2 at all: the connection is dropped, nothing else happens.
            host, port = node.tcp.removeprefix("tcp://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(bytes(range(256)) * 64)
            await writer.drain()
            await asyncio.wait_for(reader.read(), 5)
            writer.close()
            status = await node.operator("Status", pb.StatusRequest())
            return garbage, bad_utf8, huge, before, await node.rev(), status

    garbage, bad_utf8, huge, before, after, status = asyncio.run(scenario())
    assert garbage.code() == grpc.StatusCode.INVALID_ARGUMENT and "not a valid heimdall.v1.JoinRequest" in garbage.details()
    assert bad_utf8.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert huge.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert after == before and status.node_id == NODE_ID


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


# -- operator credentials ---------------------------------------------------------------------------
def test_operator_calls_need_a_credential_over_tcp(redis_servers, tmp_path):
    redis_config = redis_servers.start()
    request = pb.AuthorizePeerRequest(peer_id="laptop-1")

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            anonymous = await node.refusal(node.call(node.tcp, "AuthorizePeer", request))
            wrong_key = await node.refusal(node.call(node.tcp, "AuthorizePeer", request,
                                                     cluster_key=b"not the cluster key"))
            reads = await refused(node.call(node.tcp, "Nodes", pb.NodesRequest()))
            with_key = await node.call(node.tcp, "AuthorizePeer", request, cluster_key=CLUSTER_KEY.encode())
            on_socket = await node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-2"))
            return anonymous, wrong_key, reads, with_key, on_socket, await node.state.snapshot()

    anonymous, wrong_key, reads, with_key, on_socket, snapshot = asyncio.run(scenario())
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED and "operator" in anonymous.details()
    assert wrong_key.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reads.code() == grpc.StatusCode.UNAUTHENTICATED
    assert with_key.peer.peer_id == "laptop-1" and on_socket.peer.peer_id == "laptop-2"
    assert set(snapshot.authorized) == {"laptop-1", "laptop-2"}


def test_an_operator_proof_is_good_for_one_call_only(redis_servers, tmp_path):
    redis_config = redis_servers.start()
    method = "/heimdall.v1.Heimdall/AuthorizePeer"

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            request = pb.AuthorizePeerRequest(peer_id="laptop-1")
            proof = auth.sign_operator_call(CLUSTER_KEY.encode(), method, auth.message_payload(request))
            metadata = ((auth.PROOF_HEADER, proof.to_header()),)
            async with client.dial(node.tcp) as channel:
                stub = heimdall_pb2_grpc.HeimdallStub(channel)
                await stub.AuthorizePeer(request, metadata=metadata, timeout=5)
                replayed = await node.refusal(stub.AuthorizePeer(request, metadata=metadata, timeout=5))
                other = await node.refusal(stub.AuthorizePeer(pb.AuthorizePeerRequest(peer_id="intruder"),
                                                              metadata=metadata, timeout=5))
                malformed = await node.refusal(stub.AuthorizePeer(request, metadata=((auth.PROOF_HEADER, "x"),),
                                                                  timeout=5))
            return replayed, other, malformed

    replayed, other, malformed = asyncio.run(scenario())
    assert replayed.code() == grpc.StatusCode.UNAUTHENTICATED and "replayed" in replayed.details()
    assert other.code() == grpc.StatusCode.UNAUTHENTICATED and "altered" in other.details()
    assert malformed.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("method, request_, field", [
    ("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="bad id!"), "peer_id"),
    ("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="ok", public_key="short"), "public_key"),
    ("DeauthorizePeer", pb.DeauthorizePeerRequest(peer_id="x" * 200), "peer_id"),
    ("CreateRoute", pb.CreateRouteRequest(network="10.200.0.1/24", node_id=NODE_ID), "network"),
    ("CreateRoute", pb.CreateRouteRequest(network="10.129.0.0/24", node_id=NODE_ID), "network"),
    ("CreateRoute", pb.CreateRouteRequest(network="10.51.0.128/25", node_id=NODE_ID), "network"),
    ("CreateRoute", pb.CreateRouteRequest(network="10.200.0.0/24", node_id=""), "node_id"),
    ("DeleteRoute", pb.DeleteRouteRequest(network="not a network"), "network"),
    ("Connect", pb.ConnectRequest(peer_id="p", name="bad name", public_key=NODE_KEY), "name"),
])
def test_invalid_input_is_refused_naming_the_field_and_writes_nothing(redis_servers, tmp_path, method, request_,
                                                                      field):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            return await node.refusal(node.operator(method, request_))

    error = asyncio.run(scenario())
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith(f"{field}:")


def test_routes_need_an_existing_node_and_deleting_an_unknown_route_says_so(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            no_node = await node.refusal(node.operator("CreateRoute", pb.CreateRouteRequest(
                network="10.200.0.0/24", node_id="ghost")))
            no_route = await node.refusal(node.operator("DeleteRoute", pb.DeleteRouteRequest(network="10.200.0.0/24")))
            not_authorized = await node.refusal(node.operator("DeauthorizePeer",
                                                              pb.DeauthorizePeerRequest(peer_id="p")))
            created = await node.operator("CreateRoute", pb.CreateRouteRequest(network="10.200.0.0/24",
                                                                              node_id=NODE_ID))
            listed = await node.operator("Routes", pb.RoutesRequest())
            await node.operator("DeleteRoute", pb.DeleteRouteRequest(network="10.200.0.0/24"))
            return no_node, no_route, not_authorized, created, listed, await node.state.snapshot()

    no_node, no_route, not_authorized, created, listed, snapshot = asyncio.run(scenario())
    assert no_node.code() == grpc.StatusCode.NOT_FOUND and "ghost" in no_node.details()
    assert no_route.code() == grpc.StatusCode.NOT_FOUND and not_authorized.code() == grpc.StatusCode.NOT_FOUND
    assert created.route == pb.Route(network="10.200.0.0/24", node_id=NODE_ID)
    assert list(listed.routes) == [created.route]
    assert snapshot.routes == {}


# -- peers ----------------------------------------------------------------------------------------
def test_connect_is_refused_until_authorized_then_bound_to_the_first_key(redis_servers, tmp_path):
    redis_config = redis_servers.start()
    key, other_key = new_key(), new_key()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            connect = pb.ConnectRequest(peer_id="laptop-1", name="laptop", public_key=key)
            early = await node.refusal(node.call(node.tcp, "Connect", connect))
            await node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-1"))
            answer = await node.call(node.tcp, "Connect", connect)
            after_connect = await node.rev()
            stolen = await node.refusal(node.call(node.tcp, "Connect", pb.ConnectRequest(
                peer_id="laptop-1", name="laptop", public_key=other_key)))
            # Authorizing again without a key (a config-management rerun) keeps the bound key.
            again = await node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-1"))
            peers = await node.operator("Peers", pb.PeersRequest())
            return early, answer, stolen, after_connect, again, peers, await node.state.snapshot()

    early, answer, stolen, after_connect, again, peers, snapshot = asyncio.run(scenario())
    assert early.code() == grpc.StatusCode.PERMISSION_DENIED
    config = answer.config
    assert ipaddress.ip_interface(config.address).network.prefixlen == 32
    assert ipaddress.ip_interface(config.address).ip in ipaddress.ip_network("10.51.0.0/24")
    assert config.revision == after_connect
    [entry] = config.peers
    assert entry.public_key == NODE_KEY and list(entry.allowed_ips) == [snapshot.nodes[NODE_ID].subnet]
    assert entry.endpoint == "192.0.2.1:10100" and entry.persistent_keepalive == 25
    assert list(config.dns_servers) == [snapshot.nodes[NODE_ID].tunnel_address] and config.dns_domain == "heimdall"
    assert stolen.code() == grpc.StatusCode.PERMISSION_DENIED
    assert again.peer.public_key == key and snapshot.authorized["laptop-1"] == key
    assert [(p.id, p.public_key) for p in peers.peers] == [("laptop-1", key)]


def test_watch_pushes_each_change_at_once_and_ends_on_deauthorization(redis_servers, tmp_path):
    redis_config = redis_servers.start()
    key = new_key()

    async def scenario():
        async with running(redis_config, tmp_path, "--authorized-peer", "laptop-1") as node:
            await node.call(node.tcp, "Connect", pb.ConnectRequest(peer_id="laptop-1", name="laptop", public_key=key))
            wrong = await refused(_first(node, pb.WatchRequest(peer_id="laptop-1", public_key=new_key())))
            async with client.dial(node.tcp) as channel:
                stream = heimdall_pb2_grpc.HeimdallStub(channel).Watch(
                    pb.WatchRequest(peer_id="laptop-1", public_key=key))
                first = await asyncio.wait_for(stream.read(), 5)
                # A change that leaves this peer's config alone is not pushed...
                await node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="someone-else"))
                await node.operator("CreateRoute", pb.CreateRouteRequest(network="10.200.0.0/24", node_id=NODE_ID))
                # ...so the next message is the route's. How fast: bench peers, peer_push_ms.
                pushed = await asyncio.wait_for(stream.read(), PUSH_DEADLINE)
                await node.operator("DeauthorizePeer", pb.DeauthorizePeerRequest(peer_id="laptop-1"))
                ended = await refused(asyncio.wait_for(stream.read(), PUSH_DEADLINE))
            return wrong, first, pushed, ended

    wrong, first, pushed, ended = asyncio.run(scenario())
    assert wrong.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "10.200.0.0/24" not in first.peers[0].allowed_ips
    assert "10.200.0.0/24" in pushed.peers[0].allowed_ips and pushed.revision > first.revision
    assert ended.code() == grpc.StatusCode.PERMISSION_DENIED and "no longer authorized" in ended.details()


async def _first(node: Node, request: pb.WatchRequest):
    async with client.dial(node.tcp) as channel:
        return await heimdall_pb2_grpc.HeimdallStub(channel).Watch(request, timeout=5).read()


def test_watch_streams_end_when_the_server_stops(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path, "--authorized-peer", "laptop-1") as node:
            key = new_key()
            await node.call(node.tcp, "Connect", pb.ConnectRequest(peer_id="laptop-1", name="laptop", public_key=key))
            async with client.dial(node.tcp) as channel:
                stream = heimdall_pb2_grpc.HeimdallStub(channel).Watch(
                    pb.WatchRequest(peer_id="laptop-1", public_key=key))
                await stream.read()
                started = time.monotonic()
                stopping = asyncio.ensure_future(node.daemon.shutdown())
                ended = await refused(asyncio.wait_for(stream.read(), STOP_GRACE + PUSH_DEADLINE))
                await stopping
                return ended, time.monotonic() - started

    ended, elapsed = asyncio.run(scenario())
    assert ended.code() == grpc.StatusCode.UNAVAILABLE and "another node" in ended.details()
    assert elapsed < STOP_GRACE, "the stream was left to the grace period: its peer did not fail over at once"


# -- the state store away ----------------------------------------------------------------------------
def test_reads_are_served_while_the_local_redis_is_down_and_writes_resume_when_it_is_back(redis_servers, tmp_path):
    redis_config = redis_servers.start()
    key = new_key()

    async def scenario():
        async with running(redis_config, tmp_path, "--authorized-peer", "laptop-1") as node:
            await node.call(node.tcp, "Connect", pb.ConnectRequest(peer_id="laptop-1", name="laptop", public_key=key))
            await node.operator("CreateRoute", pb.CreateRouteRequest(network="10.200.0.0/24", node_id=NODE_ID))
            async with client.dial(node.tcp) as channel:
                stream = heimdall_pb2_grpc.HeimdallStub(channel).Watch(
                    pb.WatchRequest(peer_id="laptop-1", public_key=key))
                await stream.read()
                redis_servers.processes[-1].terminate()
                redis_servers.processes[-1].wait(5)
                routes = await node.operator("Routes", pb.RoutesRequest())
                nodes = await node.operator("Nodes", pb.NodesRequest())
                write = await refused(node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-2")))
                join = await refused(node.call(node.tcp, "Join", join_request()))
                # Back (empty: no persistence here): the stream, still open, gets the new state.
                redis_servers.processes.append(subprocess.Popen([redis_server_binary(),
                                                                 str(redis_config.config_path)],
                                                                stdout=subprocess.DEVNULL))
                await wait_for_redis(node.state)
                await make_member(node.state, node.daemon.config)
                await node.state.authorize_peer("laptop-1", key)
                await node.state.connect_peer("laptop-1", name="laptop", public_key=key, pool=Pool(
                    node.daemon.config.peer_network))
                await node.state.create_route("10.201.0.0/24", NODE_ID)
                pushed = await asyncio.wait_for(stream.read(), 5)
                stream.cancel()
            after = await node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-2"))
            return routes, nodes, write, join, pushed, after

    routes, nodes, write, join, pushed, after = asyncio.run(scenario())
    assert [r.network for r in routes.routes] == ["10.200.0.0/24"]
    assert [n.id for n in nodes.nodes] == [NODE_ID]
    assert write.code() == grpc.StatusCode.UNAVAILABLE and join.code() == grpc.StatusCode.UNAVAILABLE
    assert list(pushed.peers[0].allowed_ips) == ["10.128.0.0/16", "10.201.0.0/24"]
    assert after.peer.peer_id == "laptop-2"


async def wait_for_redis(state: State, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await state.reader.ping()
            return
        except aioredis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


# -- a node whose Redis is a replica ----------------------------------------------------------------------
def test_a_replica_node_writes_to_the_master_and_pushes_what_replicates(redis_servers, tmp_path):
    """Reads and the Watch feed from the local replica, writes to the master: the cluster's normal case."""
    master_config = redis_servers.start()
    replica_config = redis_servers.start(replica_of=master_config)
    config = api_config(master_config, tmp_path)
    key = new_key()

    class Link:  # the shape of a StateLink that follows a remote master
        def __init__(self, reader, writer):
            self.state = State(reader, writer)

    async def scenario():
        master = aioredis.Redis(port=master_config.port, password=PASSWORD, decode_responses=True)
        replica = aioredis.Redis(port=replica_config.port, password=PASSWORD, decode_responses=True)
        await make_member(State(master), config)
        await State(master).upsert_node("node-2", name="gw2", public_key=new_key(), endpoint="192.0.2.2:10100",
                                        grpc_address="tcp://192.0.2.2:9000",
                                        pool=Pool(config.node_network, config.node_subnet_prefix))
        link = Link(replica, master)
        feed = SnapshotFeed(link.state)
        following = asyncio.ensure_future(feed.run())
        await feed.wait_for(lambda s: "node-2" in s.nodes, 5)
        server = ApiServer(HeimdallService(config, CLUSTER_KEY.encode(), "node-2", link, feed),
                           address=config.addr, operator_socket=tmp_path / "replica.sock")
        await server.start()
        try:
            unix = f"unix://{tmp_path / 'replica.sock'}"
            tcp = f"tcp://127.0.0.1:{server.port}"
            async with client.dial(unix) as channel:
                operator = heimdall_pb2_grpc.HeimdallStub(channel)
                await operator.AuthorizePeer(pb.AuthorizePeerRequest(peer_id="laptop-1"), timeout=5)
                async with client.dial(tcp) as peer_channel:
                    peer = heimdall_pb2_grpc.HeimdallStub(peer_channel)
                    connected = await peer.Connect(pb.ConnectRequest(peer_id="laptop-1", name="laptop",
                                                                     public_key=key), timeout=5)
                    stream = peer.Watch(pb.WatchRequest(peer_id="laptop-1", public_key=key))
                    first = await asyncio.wait_for(stream.read(), 5)
                    await operator.CreateRoute(pb.CreateRouteRequest(network="10.200.0.0/24", node_id=NODE_ID),
                                               timeout=5)
                    pushed = await asyncio.wait_for(stream.read(), 5)
                    stream.cancel()
            return connected, first, pushed, await State(master).snapshot()
        finally:
            feed.close()
            await server.stop(1)
            following.cancel()
            await master.aclose()
            await replica.aclose()

    connected, first, pushed, snapshot = asyncio.run(scenario())
    assert snapshot.peers["laptop-1"].public_key == key and "10.200.0.0/24" in snapshot.routes
    assert connected.config.revision <= first.revision
    entries = {e.public_key: e for e in pushed.peers}
    assert "10.200.0.0/24" in entries[NODE_KEY].allowed_ips
    assert len(entries) == 2  # both nodes


def test_the_feed_notices_a_full_sync_of_the_replica_which_publishes_no_event(redis_servers, tmp_path):
    """A joining node's Redis receives the whole state by replication, without a single event."""
    master_config = redis_servers.start()
    lonely_config = redis_servers.start()
    config = api_config(master_config, tmp_path)

    async def scenario():
        async with aioredis.Redis(port=master_config.port, password=PASSWORD, decode_responses=True) as master, \
                aioredis.Redis(port=lonely_config.port, password=PASSWORD, decode_responses=True) as lonely:
            await make_member(State(master), config)
            feed = SnapshotFeed(State(lonely))
            following = asyncio.ensure_future(feed.run())
            try:
                empty = await feed.wait_for(lambda s: True, 5)
                await lonely.config_set("masterauth", PASSWORD)
                await lonely.replicaof("127.0.0.1", master_config.port)
                synced = await feed.wait_for(lambda s: NODE_ID in s.nodes, PUSH_DEADLINE)
                return empty, synced
            finally:
                following.cancel()

    empty, synced = asyncio.run(scenario())
    assert empty.nodes == {} and synced is not None and synced.master.node_id == NODE_ID


def test_repeating_an_operator_command_writes_nothing(redis_servers, tmp_path):
    """Config management reruns every command: a rerun must not bump the revision (and wake every node)."""
    redis_config = redis_servers.start()
    key = new_key()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            commands = [("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-1", public_key=key)),
                        ("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-2")),
                        ("CreateRoute", pb.CreateRouteRequest(network="10.200.0.0/24", node_id=NODE_ID))]
            for method, request in commands:
                await node.operator(method, request)
            first = await node.rev()
            answers = [await node.operator(method, request) for method, request in commands]
            return first, await node.rev(), answers

    first, second, answers = asyncio.run(scenario())
    assert second == first
    assert answers[0].peer.public_key == key and answers[2].route.node_id == NODE_ID


def test_a_second_heimdall_api_cannot_take_the_port_or_the_socket(redis_servers, tmp_path):
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            second = ApiDaemon(node.daemon.config)
            try:
                with pytest.raises(OSError, match="cannot listen"):
                    await asyncio.wait_for(second.start(), 10)
            finally:
                await second.shutdown()
            return await node.operator("Status", pb.StatusRequest())

    assert asyncio.run(scenario()).node_id == NODE_ID


def test_routes_that_would_break_every_node_are_refused(redis_servers, tmp_path):
    """An IPv6 network (the tunnels carry IPv4) or a default route (it would replace each node's
    own default route) is INVALID_ARGUMENT, and nothing is written."""
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            return [await node.refusal(node.operator("CreateRoute", pb.CreateRouteRequest(network=net, node_id=NODE_ID)))
                    for net in ("fd00:200::/64", "0.0.0.0/0")]

    ipv6, default = asyncio.run(scenario())
    assert ipv6.code() == default.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "IPv4 only" in ipv6.details() and "default route" in default.details()


# -- names ----------------------------------------------------------------------------------------
def test_names_are_trustworthy_a_node_name_is_its_own(redis_servers, tmp_path):
    """A join under another node's name, and a peer taking a node's name, are refused and write nothing;
    peers may share a name among themselves."""
    redis_config = redis_servers.start()

    async def scenario():
        async with running(redis_config, tmp_path) as node:
            join = await node.refusal(node.call(node.tcp, "Join", join_request(node_id="node-3", name="GW1")))
            await node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-1"))
            await node.operator("AuthorizePeer", pb.AuthorizePeerRequest(peer_id="laptop-2"))
            authorized = await node.rev()
            peer = await node.refusal(node.call(node.tcp, "Connect", pb.ConnectRequest(
                peer_id="laptop-1", name="gw1", public_key=new_key())))
            after = await node.rev()
            for peer_id in ("laptop-1", "laptop-2"):
                await node.call(node.tcp, "Connect", pb.ConnectRequest(peer_id=peer_id, name="laptop",
                                                                       public_key=new_key()))
            node_as_peer = await node.refusal(node.call(node.tcp, "Join", join_request(name="laptop")))
            return join, authorized, peer, after, node_as_peer, await node.state.snapshot()

    join, authorized, peer, after, node_as_peer, snapshot = asyncio.run(scenario())
    assert join.code() == grpc.StatusCode.ALREADY_EXISTS and "taken by node" in join.details()
    assert peer.code() == grpc.StatusCode.ALREADY_EXISTS and "taken by node" in peer.details()
    assert node_as_peer.code() == grpc.StatusCode.ALREADY_EXISTS and "taken by peer" in node_as_peer.details()
    assert authorized == after and set(snapshot.nodes) == {NODE_ID}
    assert sorted(p.name for p in snapshot.peers.values()) == ["laptop", "laptop"]
