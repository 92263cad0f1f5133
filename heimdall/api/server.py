"""The Heimdall gRPC service: every call parsed, admitted, validated, then served from the state.

Who may call what (heimdall.proto says the same):

- Join: anyone holding the cluster key, proven in the request (fresh, used once).
- Connect, Watch: an authorized peer, with its pinned (or first-bound) public key.
- Everything else: an operator. A call is an operator's when it arrives on the
  root-only unix socket; or, on a TLS listener given a client CA (``client-cert``),
  when the caller presented a certificate (the listener then requires and verifies
  one from every caller: mutual TLS); or when it carries a fresh cluster-key proof
  of itself in the ``heimdall-proof`` header.

Every call goes: parse (garbage: INVALID_ARGUMENT) → credentials → validation of
every field (INVALID_ARGUMENT naming it) → at most one write. A refusal at any
step has written nothing. Reads come from the node's local replica (the last
snapshot while it is down); writes go to the master, and the answer waits,
briefly, until the local replica has the write, so the caller's next read or
Watch on this node sees its own change.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import grpc
from google.protobuf import message_factory
from google.protobuf.message import DecodeError, Message
from redis.exceptions import RedisError

from heimdall import __version__, topology
from heimdall.api import auth, client
from heimdall.api.auth import AuthError, InvalidArgument
from heimdall.state.feed import SnapshotFeed
from heimdall.api.v1 import heimdall_pb2 as pb
from heimdall.settings import Config, ConfigError
from heimdall.state import Denied, NodeRecord, Pool, PoolExhausted, Snapshot, State, StateError

log = logging.getLogger(__name__)

SERVICE = pb.DESCRIPTOR.services_by_name["Heimdall"]
ANONYMOUS = frozenset({"Join", "Connect", "Watch"})  # each checks its caller itself; every other call is an operator's
MAX_MESSAGE_SIZE = 64 * 1024  # requests are a few hundred bytes; larger ones are refused by gRPC (RESOURCE_EXHAUSTED)
CATCH_UP_TIMEOUT = 2.0  # seconds a write's answer waits for the local replica before reading the master instead
# Clients ping a quiet connection every client.KEEPALIVE_TIME_MS to notice a vanished node. gRPC core
# counts a ping closer than this to the previous one (no data sent in between) as a strike and, after
# 2 strikes, ends the connection with GOAWAY too_many_pings (default: 5 min). Half the clients' period
# leaves room for timer and network jitter. The option's name is gRPC's
# GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, whose value has no "recv": the name with
# "recv" is silently ignored (tests/integration/test_keepalive.py proves this one is applied).
MIN_PING_INTERVAL_MS = client.KEEPALIVE_TIME_MS // 2
SERVER_OPTIONS = (
    ("grpc.so_reuseport", 0),  # a second heimdall-api must fail to bind, not share the port
    ("grpc.max_receive_message_length", MAX_MESSAGE_SIZE),
    ("grpc.keepalive_time_ms", 30_000),  # ping idle Watch streams: a vanished peer's stream goes
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),  # else pings without a call count against a 2 h minimum
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
)


class ApiError(Exception):
    """A refusal with its gRPC status code."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class StateSource(Protocol):
    """Where the current State comes from (a StateLink: re-pointed when the master changes)."""

    state: State


@dataclass(frozen=True)
class Transport:
    """What a listener vouches for about its callers."""

    operator: bool = False  # the root-only unix socket: every caller is an operator
    verified_client_certs: bool = False  # mutual TLS: a presented client certificate has been verified


def _status(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """The gRPC status a failed call answers with."""
    if isinstance(exc, ApiError):
        return exc.code, str(exc)
    if isinstance(exc, InvalidArgument):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, AuthError):
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if isinstance(exc, PoolExhausted):
        return grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc)
    if isinstance(exc, (StateError, RedisError)):  # e.g. the master is away or changing: worth a retry
        log.warning("state store unavailable: %s", exc)
        return grpc.StatusCode.UNAVAILABLE, "the state store is unavailable; try again shortly"
    log.error("internal error", exc_info=exc)
    return grpc.StatusCode.INTERNAL, "internal error (logged on the node)"


def _node(node: NodeRecord, snapshot: Snapshot, observer: str) -> pb.Node:
    """``node`` as the API shows it; its handshake time is the one ``observer`` (the answering node) saw."""
    return pb.Node(id=node.id, name=node.name, public_key=node.public_key, endpoint=node.endpoint,
                   subnet=node.subnet, tunnel_address=node.tunnel_address, grpc_address=node.grpc_address,
                   joined_at=node.joined_at, last_seen=snapshot.seen.get(node.id, 0),
                   last_handshake=snapshot.handshakes.get(observer, {}).get(node.public_key, 0))


def _master(snapshot: Snapshot) -> pb.Master | None:
    master = snapshot.master
    return pb.Master(node_id=master.node_id, address=master.address, epoch=master.epoch) if master else None


def _known_peer(snapshot: Snapshot, peer_id: str, name: str, public_key: str) -> bool:
    """The peer is connected under this name and bound to this key already: its Connect has nothing to write.

    A reconnect (fail-over, restart of heimdall-peer) then needs no master, so a
    peer whose node died moves to any node whose replica knows it, even when the
    dead node held the master; and it wakes no other node. The local replica may
    lag the master by a moment: a deauthorization it has not seen yet ends the
    Watch stream as soon as it arrives.
    """
    peer = snapshot.peers.get(peer_id)
    return (peer is not None and (peer.name, peer.public_key) == (name, public_key)
            and snapshot.authorized.get(peer_id) == public_key)


def name_conflict(snapshot: Snapshot, name: str, *, node_id: str = "", peer_id: str = "") -> str | None:
    """Why node ``node_id`` (or peer ``peer_id``) may not be called ``name``, or None if it may.

    DNS answers must be trustworthy: a node's name belongs to that node alone, so
    it is unique among nodes and no authorized peer holds it. Peers may share a
    name with each other (it answers with all their addresses). Compared without
    case, as DNS does.
    """
    wanted = name.lower()
    for node in snapshot.nodes.values():
        if node.id != node_id and node.name.lower() == wanted:
            return f"name {name!r} is taken by node {node.id}; choose another (--name)"
    if node_id:
        for peer in snapshot.peers.values():
            if peer.id in snapshot.authorized and peer.name.lower() == wanted:
                return f"name {name!r} is taken by peer {peer.id}; a node's name must be its own (--name)"
    return None


def _optional_key(field: str, value: str) -> str:
    return auth.validate_public_key(field, value) if value else ""


class HeimdallService:
    """The calls of the Heimdall service, over a StateLink and the local snapshot feed.

    Methods named like the proto's RPCs take an admitted request (see
    :func:`rpc_handler`) and return the answer or raise; callers are this
    module's handlers and, for :meth:`authorize_peer`, heimdall-api at start.
    """

    def __init__(self, config: Config, cluster_key: bytes, node_id: str, link: StateSource,
                 feed: SnapshotFeed) -> None:
        self.config = config
        self.node_id = node_id
        self._link = link
        self._feed = feed
        self._join_verifier = auth.ProofVerifier.for_join(cluster_key)
        self._operator_verifier = auth.ProofVerifier.for_operator(cluster_key)
        self._node_pool = Pool(config.node_network, config.node_subnet_prefix)
        self._peer_pool = Pool(config.peer_network)

    # -- admission ----------------------------------------------------------------------------
    def check_operator(self, transport: Transport, method: str, request: Message,
                       context: grpc.aio.ServicerContext) -> None:
        """Raise unless the caller holds an operator credential (see the module docstring)."""
        if transport.operator:
            return
        if transport.verified_client_certs and "x509_pem_cert" in context.auth_context():
            return
        proofs = [value for key, value in context.invocation_metadata() or () if key == auth.PROOF_HEADER]
        if not proofs:
            raise ApiError(grpc.StatusCode.UNAUTHENTICATED,
                           "operator calls need a credential: the node's operator socket, a TLS client "
                           "certificate, or a cluster-key proof (hctl --cluster-key-file)")
        if len(proofs) > 1:
            raise AuthError(f"more than one {auth.PROOF_HEADER} header")
        self._operator_verifier.verify(method, auth.message_payload(request), auth.Proof.from_header(proofs[0]))

    # -- state access -------------------------------------------------------------------------
    async def _read(self) -> Snapshot:
        """A fresh snapshot of the local replica (heartbeats change without events); while it is down,
        the feed's last one."""
        last = self._feed.latest
        if not self._feed.live and last is not None:
            return last
        try:
            return await self._link.state.snapshot()
        except RedisError as exc:
            if last is None:
                raise
            log.debug("local Redis unavailable (%s): answering from revision %d", exc, last.rev)
            return last

    async def _caught_up(self, state: State) -> Snapshot:
        """A snapshot holding the write just made through ``state``: the local replica's once it has it,
        else (replica lagging or down) the master's own."""
        master = State(state.writer)
        if self._feed.live:
            revision = await master.revision()
            snapshot = await self._feed.wait_for(lambda s: s.rev >= revision, CATCH_UP_TIMEOUT)
            if snapshot is not None:
                return snapshot
        return await master.snapshot()

    @staticmethod
    async def _master_snapshot(state: State) -> Snapshot:
        """The master's state, for a check that must not act on a lagging replica's."""
        return await State(state.writer).snapshot()

    # -- nodes --------------------------------------------------------------------------------
    async def Join(self, request: pb.JoinRequest, context) -> pb.JoinResponse:
        valid = auth.validate_join_request(request)
        self._join_verifier.verify_join(request)  # the original request: normalizing changes signed bytes
        if self._feed.latest is None or self._feed.latest.master is None:
            raise ApiError(grpc.StatusCode.UNAVAILABLE, "the cluster has no master yet; try again shortly")
        state = self._link.state
        conflict = name_conflict(await self._master_snapshot(state), valid.name, node_id=valid.node_id)
        if conflict:
            raise ApiError(grpc.StatusCode.ALREADY_EXISTS, conflict)
        record = await state.upsert_node(valid.node_id, name=valid.name, public_key=valid.public_key,
                                         endpoint=valid.endpoint, grpc_address=valid.grpc_address,
                                         pool=self._node_pool)
        log.info("node %s (%s) joined: subnet %s, endpoint %s", record.id, record.name, record.subnet,
                 record.endpoint)
        snapshot = await self._caught_up(state)
        return pb.JoinResponse(subnet=record.subnet, tunnel_address=record.tunnel_address,
                               master=_master(snapshot),
                               nodes=[_node(n, snapshot, self.node_id) for n in snapshot.oldest_first() if topology.usable(n)])

    async def Nodes(self, request: pb.NodesRequest, context) -> pb.NodesResponse:
        snapshot = await self._read()
        return pb.NodesResponse(nodes=[_node(n, snapshot, self.node_id) for n in snapshot.oldest_first() if topology.usable(n)])

    async def RemoveNode(self, request: pb.RemoveNodeRequest, context) -> pb.RemoveNodeResponse:
        wanted = auth.validate_id("node", request.node)  # an id, or a name (a name is a valid id too)
        state = self._link.state
        snapshot = await self._master_snapshot(state)
        node = snapshot.nodes.get(wanted) or next(
            (n for n in snapshot.nodes.values() if n.name.lower() == wanted.lower()), None)
        if node is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"no node {wanted}")
        try:
            routes = await state.remove_node(node.id)
        except Denied as exc:
            raise ApiError(grpc.StatusCode.FAILED_PRECONDITION, str(exc)) from None
        log.info("node %s (%s) removed, with its subnet %s and routes %s", node.id, node.name, node.subnet,
                 ", ".join(routes) or "(none)")
        await self._caught_up(state)
        return pb.RemoveNodeResponse(node=_node(node, snapshot, self.node_id), routes=routes)

    async def Status(self, request: pb.StatusRequest, context) -> pb.StatusResponse:
        snapshot = await self._read()
        return pb.StatusResponse(node_id=self.node_id, name=self.config.name, version=__version__,
                                 master=_master(snapshot), revision=snapshot.rev)

    # -- peers --------------------------------------------------------------------------------
    def peer_config(self, snapshot: Snapshot, peer_id: str, public_key: str) -> pb.PeerConfig | None:
        """The peer's config (revision left 0), or None unless it is connected and authorized with this key."""
        peer = snapshot.peers.get(peer_id)
        if peer is None or peer.public_key != public_key or snapshot.authorized.get(peer_id) not in ("", public_key):
            return None
        view = topology.peer_view(snapshot, peer_id, str(self.config.peer_network), self.config.allow_peer_to_peer)
        if view is None:
            return None
        return pb.PeerConfig(
            address=view.address,
            peers=[pb.WireGuardPeer(public_key=p.public_key, endpoint=p.endpoint or "", allowed_ips=p.allowed_ips,
                                    persistent_keepalive=p.persistent_keepalive) for p in view.peers.values()],
            dns_servers=view.dns_servers, dns_domain=self.config.domain, grpc_addresses=view.grpc_addresses)

    async def Connect(self, request: pb.ConnectRequest, context) -> pb.ConnectResponse:
        peer_id = auth.validate_id("peer_id", request.peer_id)
        name = auth.validate_name("name", request.name)
        public_key = auth.validate_public_key("public_key", request.public_key)
        snapshot = await self._read()
        if not _known_peer(snapshot, peer_id, name, public_key):
            state = self._link.state
            conflict = name_conflict(await self._master_snapshot(state), name, peer_id=peer_id)
            if conflict:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, conflict)
            try:
                await state.connect_peer(peer_id, name=name, public_key=public_key, pool=self._peer_pool)
            except Denied as exc:
                raise ApiError(grpc.StatusCode.PERMISSION_DENIED, str(exc)) from None
            snapshot = await self._caught_up(state)
        config = self.peer_config(snapshot, peer_id, public_key)
        if config is None:  # deauthorized in the meantime
            raise ApiError(grpc.StatusCode.PERMISSION_DENIED, f"peer {peer_id} is not authorized")
        config.revision = snapshot.rev
        log.info("peer %s (%s) connected: %s", peer_id, name, config.address)
        return pb.ConnectResponse(config=config)

    async def Watch(self, request: pb.WatchRequest, context) -> AsyncIterator[pb.PeerConfig]:
        peer_id = auth.validate_id("peer_id", request.peer_id)
        public_key = auth.validate_public_key("public_key", request.public_key)
        sent = None
        async with aclosing(self._feed.updates()) as updates:
            async for snapshot in updates:
                config = self.peer_config(snapshot, peer_id, public_key)
                if config is None:
                    raise ApiError(grpc.StatusCode.PERMISSION_DENIED,
                                   f"peer {peer_id} is not connected with this key: call Connect first"
                                   if sent is None else f"peer {peer_id} is no longer authorized")
                if config != sent:  # a change elsewhere in the network that leaves this peer's config alone: skip
                    sent = config
                    pushed = pb.PeerConfig()
                    pushed.CopyFrom(config)
                    pushed.revision = snapshot.rev
                    yield pushed
        raise ApiError(grpc.StatusCode.UNAVAILABLE, "this node is stopping: connect to another node")

    async def authorize_peer(self, peer_id: str, public_key: str = "") -> pb.AuthorizedPeer:
        """Authorize ``peer_id``, pinned to ``public_key`` if given.

        Without a key, an authorized peer keeps its pin or the key it has bound:
        authorizing again (a config-management run, a restart of heimdall-api)
        must not let another key take over the ID, and writes nothing.
        """
        state = self._link.state
        pinned = (await self._master_snapshot(state)).authorized.get(peer_id)
        if pinned is not None and public_key in ("", pinned):  # nothing to change
            return pb.AuthorizedPeer(peer_id=peer_id, public_key=pinned)
        await state.authorize_peer(peer_id, public_key)
        log.info("authorized peer %s%s", peer_id, f" (key {public_key})" if public_key else "")
        await self._caught_up(state)
        return pb.AuthorizedPeer(peer_id=peer_id, public_key=public_key)

    async def AuthorizePeer(self, request: pb.AuthorizePeerRequest, context) -> pb.AuthorizePeerResponse:
        peer_id = auth.validate_id("peer_id", request.peer_id)
        public_key = _optional_key("public_key", request.public_key)
        return pb.AuthorizePeerResponse(peer=await self.authorize_peer(peer_id, public_key))

    async def DeauthorizePeer(self, request: pb.DeauthorizePeerRequest, context) -> pb.DeauthorizePeerResponse:
        peer_id = auth.validate_id("peer_id", request.peer_id)
        state = self._link.state
        if peer_id not in (await self._master_snapshot(state)).authorized:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"peer {peer_id} is not authorized")
        await state.deauthorize_peer(peer_id)
        log.info("deauthorized peer %s", peer_id)
        await self._caught_up(state)
        return pb.DeauthorizePeerResponse()

    async def AuthorizedPeers(self, request: pb.AuthorizedPeersRequest, context) -> pb.AuthorizedPeersResponse:
        snapshot = await self._read()
        return pb.AuthorizedPeersResponse(peers=[pb.AuthorizedPeer(peer_id=peer_id, public_key=key)
                                                 for peer_id, key in sorted(snapshot.authorized.items())])

    async def Peers(self, request: pb.PeersRequest, context) -> pb.PeersResponse:
        snapshot = await self._read()
        return pb.PeersResponse(peers=[
            pb.Peer(id=p.id, name=p.name, public_key=p.public_key, address=p.address, last_seen=p.connected_at)
            for _, p in sorted(snapshot.peers.items())])

    # -- routes -------------------------------------------------------------------------------
    def _route_network(self, text: str) -> str:
        """A valid route network: not inside the node or peer networks, whose addresses are routed already."""
        network = auth.validate_network("network", text)
        parsed = ipaddress.ip_network(network)
        if parsed.version != 4:
            raise InvalidArgument("network", f"{network}: the network's tunnels carry IPv4 only")
        if parsed.prefixlen == 0:
            raise InvalidArgument("network", "a default route cannot be published: it would replace every "
                                             "node's own default route, the path to the other nodes included")
        for option, pool in (("node-network", self.config.node_network), ("peer-network", self.config.peer_network)):
            if parsed.version == pool.version and parsed.subnet_of(pool):
                raise InvalidArgument("network", f"{network} lies inside the {option} {pool}, routed already")
        return network

    async def Routes(self, request: pb.RoutesRequest, context) -> pb.RoutesResponse:
        snapshot = await self._read()
        return pb.RoutesResponse(routes=[pb.Route(network=network, node_id=node_id)
                                         for network, node_id in sorted(snapshot.routes.items())])

    async def CreateRoute(self, request: pb.CreateRouteRequest, context) -> pb.CreateRouteResponse:
        network = self._route_network(request.network)
        node_id = auth.validate_id("node_id", request.node_id)
        state = self._link.state
        route = pb.CreateRouteResponse(route=pb.Route(network=network, node_id=node_id))
        if (await self._master_snapshot(state)).routes.get(network) == node_id:
            return route  # nothing to change: a config-management rerun costs no write
        try:
            await state.create_route(network, node_id)
        except Denied:
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"no node {node_id}") from None
        log.info("route %s via node %s created", network, node_id)
        await self._caught_up(state)
        return route

    async def DeleteRoute(self, request: pb.DeleteRouteRequest, context) -> pb.DeleteRouteResponse:
        network = auth.validate_network("network", request.network)
        state = self._link.state
        if not await state.delete_route(network):
            raise ApiError(grpc.StatusCode.NOT_FOUND, f"no route {network}")
        log.info("route %s deleted", network)
        await self._caught_up(state)
        return pb.DeleteRouteResponse()


# -- wiring: handlers, listeners ------------------------------------------------------------------
def _admitter(service: HeimdallService, transport: Transport,
              method) -> Callable[[bytes, grpc.aio.ServicerContext], Message]:
    """Turns a call's raw bytes into an admitted request (or raises)."""
    request_class = message_factory.GetMessageClass(method.input_type)
    full_name = f"/{SERVICE.full_name}/{method.name}"
    operator_only = method.name not in ANONYMOUS

    def admit(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        try:
            request = request_class.FromString(raw)
        except DecodeError:
            raise ApiError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"the request is not a valid {request_class.DESCRIPTOR.full_name}") from None
        if operator_only:
            service.check_operator(transport, full_name, request, context)
        return request

    return admit


def _serialize(message: Message) -> bytes:
    return message.SerializeToString()


async def _abort(context: grpc.aio.ServicerContext, name: str, exc: Exception):
    code, message = _status(exc)
    if code == grpc.StatusCode.UNAUTHENTICATED:  # someone without the cluster key, or a clock far off
        log.warning("refused %s from %s: %s", name, context.peer(), message)
    await context.abort(code, message)


def _unary(name: str, admit, behavior: Callable[..., Awaitable[Message]]):
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> Message:
        try:
            return await behavior(admit(raw, context), context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - every failure becomes a status (_status logs the unexpected)
            await _abort(context, name, exc)

    return grpc.unary_unary_rpc_method_handler(handle, response_serializer=_serialize)


def _stream(name: str, admit, behavior: Callable[..., AsyncIterator[Message]]):
    async def handle(raw: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[Message]:
        try:
            async with aclosing(behavior(admit(raw, context), context)) as replies:
                async for reply in replies:
                    yield reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:  # noqa: BLE001 - as in _unary
            await _abort(context, name, exc)

    return grpc.unary_stream_rpc_method_handler(handle, response_serializer=_serialize)


def rpc_handler(service: HeimdallService, transport: Transport) -> grpc.GenericRpcHandler:
    """The Heimdall service for one listener.

    Requests arrive as raw bytes (no deserializer): a malformed one then gets
    INVALID_ARGUMENT from us rather than gRPC's UNKNOWN with parser internals.
    """
    handlers = {}
    for method in SERVICE.methods:
        wrap = _stream if method.server_streaming else _unary
        handlers[method.name] = wrap(method.name, _admitter(service, transport, method), getattr(service, method.name))
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)


def _read_file(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--{option} {path}: {exc.strerror}") from None


def server_credentials(config: Config) -> grpc.ServerCredentials | None:
    """TLS for the TCP listener: ``cert``/``key``; with ``client-cert`` (a CA) every client must present a
    certificate it signed. None: plaintext."""
    if not config.cert and not config.key:
        if config.client_cert:
            raise ConfigError("--client-cert (the CA for client certificates) needs --cert and --key")
        return None
    if not (config.cert and config.key):
        raise ConfigError("TLS needs both --cert and --key")
    pair = (_read_file(config.key, "key"), _read_file(config.cert, "cert"))
    client_ca = _read_file(config.client_cert, "client-cert") if config.client_cert else None
    return grpc.ssl_server_credentials([pair], root_certificates=client_ca, require_client_auth=client_ca is not None)


class ApiServer:
    """heimdall-api's listeners: TCP (TLS when configured) and the root-only operator socket."""

    def __init__(self, service: HeimdallService, *, address: str, operator_socket: Path | None,
                 credentials: grpc.ServerCredentials | None = None, verified_client_certs: bool = False) -> None:
        if not address.startswith("tcp://"):
            raise ConfigError(f"--addr {address}: heimdall-api listens on tcp://HOST:PORT "
                              "(the unix socket is --operator-socket)")
        self.address = address.removeprefix("tcp://")
        self.operator_socket = operator_socket
        self.port = 0  # the bound TCP port, once started
        self._socket_bound = False
        self._credentials = credentials
        self._network = grpc.aio.server(options=SERVER_OPTIONS)
        self._network.add_generic_rpc_handlers(
            (rpc_handler(service, Transport(verified_client_certs=verified_client_certs)),))
        self._local = grpc.aio.server(options=SERVER_OPTIONS)
        self._local.add_generic_rpc_handlers((rpc_handler(service, Transport(operator=True)),))

    @classmethod
    def from_config(cls, service: HeimdallService, config: Config) -> ApiServer:
        return cls(service, address=config.addr, operator_socket=config.operator_socket,
                   credentials=server_credentials(config), verified_client_certs=bool(config.client_cert))

    async def start(self) -> None:
        """Bind and serve; raises if the TCP port or the socket cannot be had."""
        try:
            if self._credentials is not None:
                self.port = self._network.add_secure_port(self.address, self._credentials)
            else:
                self.port = self._network.add_insecure_port(self.address)
        except RuntimeError as exc:  # the TCP port first: a second heimdall-api stops here, before the socket
            raise OSError(f"cannot listen on {self.address}: {exc}") from None
        await self._network.start()
        if self.operator_socket is not None:
            self._bind_socket(self.operator_socket)
            await self._local.start()

    def _bind_socket(self, path: Path) -> None:
        """The operator socket, 0600 from the start (connecting needs write permission on it)."""
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # left by a previous run (the TCP bind proved no other instance runs)
        umask = os.umask(0o177)
        try:
            self._local.add_insecure_port(f"unix:{path}")
        finally:
            os.umask(umask)
        self._socket_bound = True
        os.chmod(path, 0o600)

    async def stop(self, grace: float | None) -> None:
        """Stop accepting calls; running ones get ``grace`` seconds to finish."""
        await self._network.stop(grace)
        await self._local.stop(grace)
        if self._socket_bound:
            self.operator_socket.unlink(missing_ok=True)
