"""Cluster-key proofs for joins and operator calls, and validation of API input."""
import pytest

from heimdall.api import auth
from heimdall.api.v1 import heimdall_pb2 as pb

CLUSTER_KEY = b"correct horse battery staple"
NOW = 1_700_000_000.0
PUBLIC_KEY = "xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg="
ROUTE_METHOD = "/heimdall.v1.Heimdall/CreateRoute"
SIGNED_JOIN_FIELDS = [f.name for f in pb.JoinRequest.DESCRIPTOR.fields if f.name != "proof"]


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def join_request(**fields) -> pb.JoinRequest:
    values = dict(node_id="gw1", name="router", public_key=PUBLIC_KEY,
                  endpoint="192.0.2.10:10100", grpc_address="tcp://192.0.2.10:9000")
    return pb.JoinRequest(**(values | fields))


def signed_join(key: bytes = CLUSTER_KEY, now: float = NOW) -> pb.JoinRequest:
    request = join_request()
    auth.sign_join(key, request, now=now)
    return request


def join_verifier(clock: Clock | None = None, **options) -> auth.ProofVerifier:
    return auth.ProofVerifier.for_join(CLUSTER_KEY, clock=clock or Clock(), **options)


def test_valid_join_proof_is_accepted_and_carries_no_secret():
    request = signed_join()
    join_verifier().verify_join(request)
    assert request.timestamp == int(NOW)
    assert len(request.nonce) == auth.NONCE_SIZE
    assert CLUSTER_KEY not in request.SerializeToString()


def test_join_proof_made_with_another_cluster_key_is_rejected():
    with pytest.raises(auth.AuthError, match="wrong cluster key"):
        join_verifier().verify_join(signed_join(key=b"another cluster key, not ours"))


@pytest.mark.parametrize("field", SIGNED_JOIN_FIELDS)
def test_changing_any_signed_join_field_breaks_the_proof(field):
    request = signed_join()
    value = getattr(request, field)
    if isinstance(value, str):
        setattr(request, field, value + "x")
    elif isinstance(value, bytes):
        setattr(request, field, bytes([value[0] ^ 1]) + value[1:])
    else:
        setattr(request, field, value + 1)
    with pytest.raises(auth.AuthError, match="does not match"):
        join_verifier().verify_join(request)


def test_join_request_signs_exactly_these_public_fields():
    assert SIGNED_JOIN_FIELDS == ["node_id", "name", "public_key", "endpoint", "grpc_address", "timestamp", "nonce"]


@pytest.mark.parametrize("age", [-61, 61, -3600, 10**12])
def test_stale_or_future_timestamp_is_rejected(age):
    request = signed_join(now=NOW - age)
    with pytest.raises(auth.AuthError, match="from this node's clock"):
        join_verifier().verify_join(request)


@pytest.mark.parametrize("age", [-60, 0, 60])
def test_timestamp_within_the_window_is_accepted(age):
    join_verifier().verify_join(signed_join(now=NOW - age))


def test_replayed_join_is_rejected_for_as_long_as_its_timestamp_is_valid():
    clock = Clock()
    verifier = join_verifier(clock)
    request = signed_join()
    verifier.verify_join(request)
    with pytest.raises(auth.AuthError, match="replayed"):
        verifier.verify_join(request)
    clock.now = NOW + auth.MAX_CLOCK_SKEW
    with pytest.raises(auth.AuthError, match="replayed"):
        verifier.verify_join(request)
    clock.now = NOW + auth.MAX_CLOCK_SKEW + 1
    with pytest.raises(auth.AuthError, match="from this node's clock"):
        verifier.verify_join(request)


def test_replay_cache_forgets_expired_nonces_and_refuses_when_full():
    clock = Clock()
    cache = auth.MemoryNonceCache(max_entries=2, clock=clock)
    assert not cache.seen(b"a" * 16, NOW + 10)
    assert not cache.seen(b"b" * 16, NOW + 20)
    assert cache.seen(b"a" * 16, NOW + 10)
    with pytest.raises(auth.AuthError, match="too many calls"):
        cache.seen(b"c" * 16, NOW + 30)
    clock.now = NOW + 11
    assert not cache.seen(b"c" * 16, NOW + 30)
    assert len(cache) == 2


def test_only_proofs_with_a_good_mac_use_up_room_in_the_replay_cache():
    cache = auth.MemoryNonceCache()
    verifier = join_verifier(nonces=cache)
    with pytest.raises(auth.AuthError):
        verifier.verify_join(signed_join(key=b"another cluster key, not ours"))
    assert len(cache) == 0


@pytest.mark.parametrize("nonce, mac", [(b"short", b"m" * 32), (b"n" * 16, b"m" * 31), (b"n" * 4096, b"m" * 32)])
def test_malformed_proof_is_rejected(nonce, mac):
    with pytest.raises(auth.AuthError, match="malformed proof"):
        join_verifier().verify("/heimdall.v1.Heimdall/Join", b"", auth.Proof(int(NOW), nonce, mac))


def test_operator_proof_binds_method_payload_and_purpose():
    payload = auth.message_payload(pb.CreateRouteRequest(network="10.200.0.0/24", node_id="gw2"))
    operator = auth.ProofVerifier.for_operator(CLUSTER_KEY, clock=Clock())
    operator.verify(ROUTE_METHOD, payload, auth.sign_operator_call(CLUSTER_KEY, ROUTE_METHOD, payload, now=NOW))

    other_network = auth.message_payload(pb.CreateRouteRequest(network="10.201.0.0/24", node_id="gw2"))
    same_fields_other_type = auth.message_payload(pb.Route(network="10.200.0.0/24", node_id="gw2"))
    for method, signed_payload in [
        ("/heimdall.v1.Heimdall/DeleteRoute", payload),
        (ROUTE_METHOD, other_network),
        (ROUTE_METHOD, same_fields_other_type),
    ]:
        proof = auth.sign_operator_call(CLUSTER_KEY, method, signed_payload, now=NOW)
        with pytest.raises(auth.AuthError, match="does not match"):
            operator.verify(ROUTE_METHOD, payload, proof)

    join = signed_join()
    join_payload = auth.message_payload(join, exclude=("timestamp", "nonce", "proof"))
    with pytest.raises(auth.AuthError, match="does not match"):
        operator.verify(auth.JOIN_METHOD, join_payload, auth.Proof(join.timestamp, join.nonce, join.proof))


def test_proof_travels_in_a_header_and_malformed_headers_are_rejected():
    proof = auth.sign_operator_call(CLUSTER_KEY, ROUTE_METHOD, b"payload", now=NOW)
    assert auth.Proof.from_header(proof.to_header()) == proof
    for header in ["", "1.2", "x.00.00", "1.0g.00", "1.000.00", "1.00.00.00", "1.00.00\n", "1." + "0" * 5000 + ".00"]:
        with pytest.raises(auth.AuthError, match="malformed"):
            auth.Proof.from_header(header)


def test_message_payload_is_unambiguous_and_covers_only_what_it_can_encode():
    a = auth.message_payload(join_request(name="ab", endpoint="c"))
    b = auth.message_payload(join_request(name="a", endpoint="bc"))
    assert a != b
    assert auth.message_payload(join_request()) == auth.message_payload(join_request())
    with pytest.raises(TypeError, match="nodes"):
        auth.message_payload(pb.NodesResponse())
    with pytest.raises(TypeError, match="master"):
        auth.message_payload(pb.StatusResponse())
    with pytest.raises(ValueError, match="no field"):
        auth.message_payload(join_request(), exclude=("prof",))


def test_valid_join_request_is_normalized():
    request = join_request(endpoint="[2001:db8:0::1]:10100", grpc_address="gw1.example.net:9000")
    normalized = auth.validate_join_request(request)
    assert normalized.endpoint == "[2001:db8::1]:10100"
    assert normalized.grpc_address == "tcp://gw1.example.net:9000"
    assert normalized.node_id == "gw1" and normalized.public_key == PUBLIC_KEY


@pytest.mark.parametrize("field, value", [
    ("node_id", ""),
    ("node_id", "-gw1"),
    ("node_id", "gw:1"),
    ("node_id", "gw1\n"),
    ("node_id", "x" * 65),
    ("name", ""),
    ("name", "router.example"),
    ("name", "router-"),
    ("name", "r" * 64),
    ("name", "röuter"),
    ("public_key", ""),
    ("public_key", "not base64!"),
    ("public_key", PUBLIC_KEY[:-4]),
    ("public_key", PUBLIC_KEY[:-2] + "h="),  # non-canonical: stray low bits
    ("public_key", PUBLIC_KEY * 100),
    ("endpoint", ""),
    ("endpoint", "192.0.2.10"),
    ("endpoint", "192.0.2.10:0"),
    ("endpoint", "192.0.2.10:65536"),
    ("endpoint", "192.0.2.10:١٠"),
    ("endpoint", "gw1.example.net:10100"),
    ("endpoint", "2001:db8::1:10100"),
    ("endpoint", "0.0.0.0:10100"),
    ("endpoint", "1" * 10_000 + ":1"),
    ("grpc_address", ""),
    ("grpc_address", "unix:///run/heimdall/api.sock"),
    ("grpc_address", "tcp://192.0.2.10"),
    ("grpc_address", "010.0.0.1:9000"),
    ("grpc_address", "bad_host:9000"),
    ("grpc_address", "a" * 300 + ":9000"),
])
def test_invalid_join_field_is_rejected_with_its_name(field, value):
    with pytest.raises(auth.InvalidArgument, match=f"^{field}: ") as caught:
        auth.validate_join_request(join_request(**{field: value}))
    assert caught.value.field == field
    assert isinstance(caught.value, ValueError)


def test_oversized_values_are_refused_before_parsing():
    with pytest.raises(auth.InvalidArgument, match="endpoint: too long: 10002 bytes"):
        auth.validate_endpoint("endpoint", "1" * 10_000 + ":1")
    with pytest.raises(auth.InvalidArgument, match="blob: too long: 5 bytes, at most 4"):
        auth.validate_size("blob", "aaaé", 4)
    auth.validate_size("blob", b"aaaa", 4)


def test_network_must_be_cidr_without_host_bits():
    assert auth.validate_network("network", "10.200.0.0/24") == "10.200.0.0/24"
    assert auth.validate_network("network", "2001:db8:0::/48") == "2001:db8::/48"
    for value in ["10.200.0.1/24", "10.200.0.0/33", "router", ""]:
        with pytest.raises(auth.InvalidArgument, match="^network: "):
            auth.validate_network("network", value)
