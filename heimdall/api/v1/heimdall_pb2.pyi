from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("id", "name", "public_key", "endpoint", "subnet", "tunnel_address", "grpc_address", "joined_at", "last_seen", "last_handshake")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    JOINED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    LAST_HANDSHAKE_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    public_key: str
    endpoint: str
    subnet: str
    tunnel_address: str
    grpc_address: str
    joined_at: int
    last_seen: int
    last_handshake: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., public_key: _Optional[str] = ..., endpoint: _Optional[str] = ..., subnet: _Optional[str] = ..., tunnel_address: _Optional[str] = ..., grpc_address: _Optional[str] = ..., joined_at: _Optional[int] = ..., last_seen: _Optional[int] = ..., last_handshake: _Optional[int] = ...) -> None: ...

class Master(_message.Message):
    __slots__ = ("node_id", "address", "epoch")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    epoch: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., epoch: _Optional[int] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("node_id", "name", "public_key", "endpoint", "grpc_address", "timestamp", "nonce", "proof")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    NONCE_FIELD_NUMBER: _ClassVar[int]
    PROOF_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    public_key: str
    endpoint: str
    grpc_address: str
    timestamp: int
    nonce: bytes
    proof: bytes
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., public_key: _Optional[str] = ..., endpoint: _Optional[str] = ..., grpc_address: _Optional[str] = ..., timestamp: _Optional[int] = ..., nonce: _Optional[bytes] = ..., proof: _Optional[bytes] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("subnet", "tunnel_address", "master", "nodes")
    SUBNET_FIELD_NUMBER: _ClassVar[int]
    TUNNEL_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    subnet: str
    tunnel_address: str
    master: Master
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, subnet: _Optional[str] = ..., tunnel_address: _Optional[str] = ..., master: _Optional[_Union[Master, _Mapping]] = ..., nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class NodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RemoveNodeRequest(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: str
    def __init__(self, node: _Optional[str] = ...) -> None: ...

class RemoveNodeResponse(_message.Message):
    __slots__ = ("node", "routes")
    NODE_FIELD_NUMBER: _ClassVar[int]
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    node: Node
    routes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., routes: _Optional[_Iterable[str]] = ...) -> None: ...

class NodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class Peer(_message.Message):
    __slots__ = ("id", "name", "public_key", "address", "last_seen")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    public_key: str
    address: str
    last_seen: int
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., public_key: _Optional[str] = ..., address: _Optional[str] = ..., last_seen: _Optional[int] = ...) -> None: ...

class WireGuardPeer(_message.Message):
    __slots__ = ("public_key", "endpoint", "allowed_ips", "persistent_keepalive")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_IPS_FIELD_NUMBER: _ClassVar[int]
    PERSISTENT_KEEPALIVE_FIELD_NUMBER: _ClassVar[int]
    public_key: str
    endpoint: str
    allowed_ips: _containers.RepeatedScalarFieldContainer[str]
    persistent_keepalive: int
    def __init__(self, public_key: _Optional[str] = ..., endpoint: _Optional[str] = ..., allowed_ips: _Optional[_Iterable[str]] = ..., persistent_keepalive: _Optional[int] = ...) -> None: ...

class PeerConfig(_message.Message):
    __slots__ = ("revision", "address", "peers", "dns_servers", "dns_domain", "grpc_addresses")
    REVISION_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PEERS_FIELD_NUMBER: _ClassVar[int]
    DNS_SERVERS_FIELD_NUMBER: _ClassVar[int]
    DNS_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    revision: int
    address: str
    peers: _containers.RepeatedCompositeFieldContainer[WireGuardPeer]
    dns_servers: _containers.RepeatedScalarFieldContainer[str]
    dns_domain: str
    grpc_addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, revision: _Optional[int] = ..., address: _Optional[str] = ..., peers: _Optional[_Iterable[_Union[WireGuardPeer, _Mapping]]] = ..., dns_servers: _Optional[_Iterable[str]] = ..., dns_domain: _Optional[str] = ..., grpc_addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class ConnectRequest(_message.Message):
    __slots__ = ("peer_id", "name", "public_key")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    name: str
    public_key: str
    def __init__(self, peer_id: _Optional[str] = ..., name: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class ConnectResponse(_message.Message):
    __slots__ = ("config",)
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    config: PeerConfig
    def __init__(self, config: _Optional[_Union[PeerConfig, _Mapping]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("peer_id", "public_key")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    public_key: str
    def __init__(self, peer_id: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class AuthorizedPeer(_message.Message):
    __slots__ = ("peer_id", "public_key")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    public_key: str
    def __init__(self, peer_id: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class AuthorizePeerRequest(_message.Message):
    __slots__ = ("peer_id", "public_key")
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    public_key: str
    def __init__(self, peer_id: _Optional[str] = ..., public_key: _Optional[str] = ...) -> None: ...

class AuthorizePeerResponse(_message.Message):
    __slots__ = ("peer",)
    PEER_FIELD_NUMBER: _ClassVar[int]
    peer: AuthorizedPeer
    def __init__(self, peer: _Optional[_Union[AuthorizedPeer, _Mapping]] = ...) -> None: ...

class DeauthorizePeerRequest(_message.Message):
    __slots__ = ("peer_id",)
    PEER_ID_FIELD_NUMBER: _ClassVar[int]
    peer_id: str
    def __init__(self, peer_id: _Optional[str] = ...) -> None: ...

class DeauthorizePeerResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuthorizedPeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AuthorizedPeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[AuthorizedPeer]
    def __init__(self, peers: _Optional[_Iterable[_Union[AuthorizedPeer, _Mapping]]] = ...) -> None: ...

class PeersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PeersResponse(_message.Message):
    __slots__ = ("peers",)
    PEERS_FIELD_NUMBER: _ClassVar[int]
    peers: _containers.RepeatedCompositeFieldContainer[Peer]
    def __init__(self, peers: _Optional[_Iterable[_Union[Peer, _Mapping]]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("network", "node_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    node_id: str
    def __init__(self, network: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class RoutesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class RoutesResponse(_message.Message):
    __slots__ = ("routes",)
    ROUTES_FIELD_NUMBER: _ClassVar[int]
    routes: _containers.RepeatedCompositeFieldContainer[Route]
    def __init__(self, routes: _Optional[_Iterable[_Union[Route, _Mapping]]] = ...) -> None: ...

class CreateRouteRequest(_message.Message):
    __slots__ = ("network", "node_id")
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    network: str
    node_id: str
    def __init__(self, network: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class CreateRouteResponse(_message.Message):
    __slots__ = ("route",)
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    route: Route
    def __init__(self, route: _Optional[_Union[Route, _Mapping]] = ...) -> None: ...

class DeleteRouteRequest(_message.Message):
    __slots__ = ("network",)
    NETWORK_FIELD_NUMBER: _ClassVar[int]
    network: str
    def __init__(self, network: _Optional[str] = ...) -> None: ...

class DeleteRouteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ("node_id", "name", "version", "master", "revision")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    MASTER_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    name: str
    version: str
    master: Master
    revision: int
    def __init__(self, node_id: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., master: _Optional[_Union[Master, _Mapping]] = ..., revision: _Optional[int] = ...) -> None: ...
