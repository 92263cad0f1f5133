"""Proofs of the cluster key for API calls, and validation of API input.

A proof is HMAC-SHA256, under a key derived from the cluster key for one purpose
("join" for node joins, "operator" for operator calls), over

    "heimdall-proof-v1" | method | timestamp | nonce | payload

with every part prefixed by its length, so two different inputs never frame to
the same bytes. The method is the full gRPC method name, so a proof for one call
is worthless for another. A request's payload is :func:`message_payload`: its
type name, then each field's number and length-prefixed value in field-number
order. That encoding is ours rather than protobuf's serialization, which is not
canonical across implementations and versions; it walks the message descriptor,
so a field added to the .proto is covered without a code change (both sides must
then know it), and it refuses field types it cannot encode instead of skipping them.

A verifier accepts each proof once: its timestamp must lie within the clock-skew
window and its nonce must be unseen within that window (a :class:`NonceCache`).

Failures raise :class:`AuthError` (gRPC UNAUTHENTICATED); malformed input raises
:class:`InvalidArgument` (gRPC INVALID_ARGUMENT), whose message names the field.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import heapq
import hmac
import ipaddress
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from heimdall import cluster
from heimdall.api.v1 import heimdall_pb2

JOIN_METHOD = "/heimdall.v1.Heimdall/Join"
PROOF_HEADER = "heimdall-proof"  # gRPC metadata key carrying an operator call's proof
NONCE_SIZE = 16
MAC_SIZE = hashlib.sha256().digest_size
MAX_CLOCK_SKEW = 60.0  # seconds either way
_JOIN_PROOF_FIELDS = ("timestamp", "nonce", "proof")
_PROOF_TAG = b"heimdall-proof-v1"  # separates our MACs from any other use of the key
_INTEGER_TYPES = frozenset({
    FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT32,
    FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT32, FieldDescriptor.TYPE_SINT64,
    FieldDescriptor.TYPE_FIXED32, FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED32,
    FieldDescriptor.TYPE_SFIXED64, FieldDescriptor.TYPE_BOOL,
})


class AuthError(Exception):
    """A call's proof is missing, malformed, wrong, stale or replayed."""


class InvalidArgument(ValueError):
    """An API input is malformed; ``field`` names it and so does the message."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


# --- proofs ---------------------------------------------------------------


@dataclass(frozen=True)
class Proof:
    """What a caller sends to prove it holds the cluster key."""

    timestamp: int  # unix seconds
    nonce: bytes
    mac: bytes

    def to_header(self) -> str:
        """The value of the :data:`PROOF_HEADER` metadata entry."""
        return f"{self.timestamp}.{self.nonce.hex()}.{self.mac.hex()}"

    @classmethod
    def from_header(cls, text: str) -> Proof:
        match = re.fullmatch(r"(-?[0-9]{1,19})\.([0-9a-f]{1,128})\.([0-9a-f]{1,128})", text)
        if match is None:
            raise AuthError(f"malformed {PROOF_HEADER} header: expected TIMESTAMP.NONCE.MAC")
        timestamp, nonce, mac = match.groups()
        try:
            return cls(int(timestamp), bytes.fromhex(nonce), bytes.fromhex(mac))
        except ValueError:
            raise AuthError(f"malformed {PROOF_HEADER} header: odd-length hex") from None


def _frame(parts: Iterable[bytes]) -> bytes:
    """Each part prefixed by its length: an injective encoding of a sequence of byte strings."""
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _field_bytes(field: FieldDescriptor, value: Any) -> bytes:
    if field.is_repeated:
        raise TypeError(f"cannot sign repeated field {field.full_name}")
    if field.type == FieldDescriptor.TYPE_STRING:
        return value.encode()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return value
    if field.type in _INTEGER_TYPES:
        return str(int(value)).encode()
    raise TypeError(f"cannot sign field {field.full_name} of this type")


def message_payload(message: Message, exclude: Iterable[str] = ()) -> bytes:
    """The canonical bytes of ``message`` that a proof covers (every field not in ``exclude``)."""
    descriptor = message.DESCRIPTOR
    excluded = set(exclude)
    unknown = excluded - set(descriptor.fields_by_name)
    if unknown:
        raise ValueError(f"{descriptor.full_name} has no field {', '.join(sorted(unknown))}")
    parts = [descriptor.full_name.encode()]
    for field in sorted(descriptor.fields, key=lambda f: f.number):
        if field.name not in excluded:
            parts += [str(field.number).encode(), _field_bytes(field, getattr(message, field.name))]
    return _frame(parts)


def _purpose_key(cluster_key: bytes, purpose: str) -> bytes:
    return cluster.derive(cluster_key, purpose).encode()


def _mac(key: bytes, method: str, timestamp: int, nonce: bytes, payload: bytes) -> bytes:
    message = _frame([_PROOF_TAG, method.encode(), str(timestamp).encode(), nonce, payload])
    return hmac.new(key, message, hashlib.sha256).digest()


def _sign(key: bytes, method: str, payload: bytes, now: float | None) -> Proof:
    timestamp = int(time.time() if now is None else now)
    nonce = secrets.token_bytes(NONCE_SIZE)
    return Proof(timestamp, nonce, _mac(key, method, timestamp, nonce, payload))


def sign_operator_call(cluster_key: bytes, method: str, payload: bytes, *, now: float | None = None) -> Proof:
    """A proof for one operator call (``payload``: usually :func:`message_payload` of the request)."""
    return _sign(_purpose_key(cluster_key, "operator"), method, payload, now)


def sign_join(cluster_key: bytes, request: heimdall_pb2.JoinRequest, *, now: float | None = None) -> None:
    """Fill in the request's timestamp, nonce and proof."""
    proof = _sign(_purpose_key(cluster_key, "join"), JOIN_METHOD,
                  message_payload(request, exclude=_JOIN_PROOF_FIELDS), now)
    request.timestamp, request.nonce, request.proof = proof.timestamp, proof.nonce, proof.mac


class NonceCache(Protocol):
    """Where a verifier remembers nonces (in process, or e.g. Redis ``SET key 1 NX EXAT``)."""

    def seen(self, nonce: bytes, expires_at: float) -> bool:
        """Record ``nonce`` until ``expires_at`` (unix seconds); True if it was already recorded."""


class MemoryNonceCache:
    """Nonces seen by this process, each forgotten once it expires; at most ``max_entries`` at once.

    When full of unexpired nonces (only callers holding the key can fill it) it
    refuses new ones rather than forget any, so no replay ever slips through.
    """

    def __init__(self, max_entries: int = 100_000, clock: Callable[[], float] = time.time) -> None:
        self._max_entries = max_entries
        self._clock = clock
        self._nonces: set[bytes] = set()
        self._by_expiry: list[tuple[float, bytes]] = []  # heap
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._nonces)

    def seen(self, nonce: bytes, expires_at: float) -> bool:
        with self._lock:
            now = self._clock()
            while self._by_expiry and self._by_expiry[0][0] < now:
                self._nonces.discard(heapq.heappop(self._by_expiry)[1])
            if nonce in self._nonces:
                return True
            if len(self._nonces) >= self._max_entries:
                raise AuthError("too many calls within the clock-skew window; try again later")
            self._nonces.add(nonce)
            heapq.heappush(self._by_expiry, (expires_at, nonce))
            return False


class ProofVerifier:
    """Checks proofs made with one purpose's key; each proof is accepted once."""

    def __init__(
        self,
        key: bytes,
        *,
        nonces: NonceCache | None = None,
        max_skew: float = MAX_CLOCK_SKEW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._nonces = nonces if nonces is not None else MemoryNonceCache(clock=clock)
        self._max_skew = max_skew
        self._clock = clock

    @classmethod
    def for_join(cls, cluster_key: bytes, **options: Any) -> ProofVerifier:
        return cls(_purpose_key(cluster_key, "join"), **options)

    @classmethod
    def for_operator(cls, cluster_key: bytes, **options: Any) -> ProofVerifier:
        return cls(_purpose_key(cluster_key, "operator"), **options)

    def verify(self, method: str, payload: bytes, proof: Proof) -> None:
        """Raise AuthError unless ``proof`` is a fresh, unused proof of ``method`` and ``payload``."""
        if len(proof.nonce) != NONCE_SIZE or len(proof.mac) != MAC_SIZE:
            raise AuthError(f"malformed proof: nonce must be {NONCE_SIZE} bytes and MAC {MAC_SIZE}")
        drift = proof.timestamp - self._clock()
        if abs(drift) > self._max_skew:
            raise AuthError(f"timestamp is {drift:+.0f} s from this node's clock (limit ±{self._max_skew:.0f} s)")
        expected = _mac(self._key, method, proof.timestamp, proof.nonce, payload)
        if not hmac.compare_digest(expected, proof.mac):
            raise AuthError("proof does not match: wrong cluster key or altered request")
        # Recorded only once the MAC is good, so strangers cannot fill the cache.
        if self._nonces.seen(proof.nonce, proof.timestamp + self._max_skew):
            raise AuthError("nonce already used: replayed request")

    def verify_join(self, request: heimdall_pb2.JoinRequest) -> None:
        """Raise AuthError unless the request carries a fresh, unused proof made by :func:`sign_join`."""
        payload = message_payload(request, exclude=_JOIN_PROOF_FIELDS)
        self.verify(JOIN_METHOD, payload, Proof(request.timestamp, request.nonce, request.proof))


# --- input validation -------------------------------------------------------

MAX_ID_LENGTH = 64
MAX_NAME_LENGTH = 63
MAX_ADDRESS_LENGTH = 64  # endpoints and networks; the longest valid one has 53 characters
MAX_HOSTNAME_LENGTH = 253
MAX_GRPC_ADDRESS_LENGTH = len("tcp://") + MAX_HOSTNAME_LENGTH + len(":65535")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_NAME = re.compile(_LABEL)
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
_PORT = re.compile(r"[0-9]{1,5}")
_PUBLIC_KEY_LENGTH = 44  # base64 of 32 bytes


def validate_size(field: str, value: str | bytes, limit: int) -> None:
    """Refuse values longer than ``limit`` bytes (text counts as UTF-8)."""
    size = len(value.encode() if isinstance(value, str) else value)
    if size > limit:
        raise InvalidArgument(field, f"too long: {size} bytes, at most {limit}")


def validate_id(field: str, value: str) -> str:
    """A node or peer id: 1-64 of letters, digits, '.', '_', '-' (a UUID fits)."""
    validate_size(field, value, MAX_ID_LENGTH)
    if not _ID.fullmatch(value):
        raise InvalidArgument(field, "must be 1-64 of letters, digits, '.', '_', '-', starting with a letter or digit")
    return value


def validate_name(field: str, value: str) -> str:
    """A host name as DNS serves it: one label."""
    validate_size(field, value, MAX_NAME_LENGTH)
    if not _NAME.fullmatch(value):
        raise InvalidArgument(field, "must be a hostname label: 1-63 of letters, digits and inner '-'")
    return value


def validate_public_key(field: str, value: str) -> str:
    """A WireGuard public key: 32 bytes in canonical standard base64."""
    validate_size(field, value, _PUBLIC_KEY_LENGTH)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(field, "must be a WireGuard key in base64") from None
    if len(raw) != 32 or base64.b64encode(raw).decode() != value:
        raise InvalidArgument(field, "must be a WireGuard key: 32 bytes in base64 (44 characters)")
    return value


def _split_port(field: str, value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not _PORT.fullmatch(port) or not 1 <= int(port) <= 65535:
        raise InvalidArgument(field, "must end in ':PORT' with a port 1-65535")
    return host, int(port)


def _ip_text(field: str, host: str) -> str:
    """``host`` as an address: IPv4 bare, IPv6 in brackets; normalized."""
    try:
        if host.startswith("[") and host.endswith("]"):
            return f"[{ipaddress.IPv6Address(host[1:-1])}]"
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        raise InvalidArgument(field, f"{host!r} is not an IPv4 address or a bracketed IPv6 address") from None


def validate_endpoint(field: str, value: str) -> str:
    """A WireGuard endpoint, IP:PORT or [IPv6]:PORT; returned normalized."""
    validate_size(field, value, MAX_ADDRESS_LENGTH)
    host, port = _split_port(field, value)
    ip_text = _ip_text(field, host)
    if ipaddress.ip_address(ip_text.strip("[]")).is_unspecified:
        raise InvalidArgument(field, "must be a reachable address, not 0.0.0.0 or ::")
    return f"{ip_text}:{port}"


def validate_grpc_address(field: str, value: str) -> str:
    """An API address others can dial: [tcp://]HOST:PORT, HOST an IP or DNS name; returned as tcp://HOST:PORT."""
    validate_size(field, value, MAX_GRPC_ADDRESS_LENGTH)
    host, port = _split_port(field, value.removeprefix("tcp://"))
    if host.startswith("[") or re.fullmatch(r"[0-9.]+", host):
        host = _ip_text(field, host)
    elif len(host) > MAX_HOSTNAME_LENGTH or not _HOSTNAME.fullmatch(host):
        raise InvalidArgument(field, f"{host!r} is not an IP address, a bracketed IPv6 address or a DNS name")
    return f"tcp://{host}:{port}"


def validate_network(field: str, value: str) -> str:
    """A network in CIDR notation with no host bits set; returned normalized."""
    validate_size(field, value, MAX_ADDRESS_LENGTH)
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as error:
        raise InvalidArgument(field, f"must be a network like 10.200.0.0/24 ({error})") from None


def validate_join_request(request: heimdall_pb2.JoinRequest) -> heimdall_pb2.JoinRequest:
    """A normalized copy of ``request``; the proof fields are the verifier's to check.

    Verify the proof against the original: normalizing changes signed bytes.
    """
    return heimdall_pb2.JoinRequest(
        node_id=validate_id("node_id", request.node_id),
        name=validate_name("name", request.name),
        public_key=validate_public_key("public_key", request.public_key),
        endpoint=validate_endpoint("endpoint", request.endpoint),
        grpc_address=validate_grpc_address("grpc_address", request.grpc_address),
        timestamp=request.timestamp,
        nonce=request.nonce,
        proof=request.proof,
    )
