"""Dialing a node's API: shared by hctl, heimdall-peer and heimdall-wg.

Addresses are ``tcp://HOST:PORT`` (bare ``HOST:PORT`` too) or ``unix:///PATH``
(a node's operator socket: local and always plaintext). TCP is plaintext unless
a TLS option is set (:class:`TlsOptions`). With a cluster key, :func:`dial`
signs every call with an operator proof (the ``heimdall-proof`` header), which
is how an operator works against a node over the network without a certificate.

Failed calls raise ``grpc.aio.AioRpcError``; :func:`join` sorts them into
:class:`JoinRefused` (retrying will not help) and :class:`ApiUnavailable`.
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc

from heimdall import settings
from heimdall.api import auth
from heimdall.api.tls import TlsOptions
from heimdall.api.v1 import heimdall_pb2, heimdall_pb2_grpc

CALL_TIMEOUT = 10.0  # seconds
CONNECT_TIMEOUT = 5.0
# A peer's Watch stream is quiet between changes, and a node that vanishes without a FIN or an
# RST (power loss, partition) leaves it open for good: only HTTP/2 keepalive pings tell. A ping
# after KEEPALIVE_TIME_MS of quiet; no ack within KEEPALIVE_TIMEOUT_MS and the connection is
# dropped, so a dead node is noticed within about 4 s (for a ping and its ack every 2 s). Nodes
# accept this rate (server.MIN_PING_INTERVAL_MS): gRPC's default policy would end the connection
# with GOAWAY too_many_pings.
KEEPALIVE_TIME_MS = 2_000
KEEPALIVE_TIMEOUT_MS = 2_000
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    # gRPC core makes this the socket's TCP_USER_TIMEOUT: unacknowledged bytes (a ping to a partitioned
    # node) end the connection after it...
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    # ...but waits for a ping's ack this long (default 1 min; grpcio 1.85 uses it for keepalive pings
    # too): a node whose kernel still answers TCP but whose API does not (a hung or stopped process).
    ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),  # between the calls too, e.g. while the peer dials
    # gRPC core lets a client send 2 pings, then none (newer: one a minute) until it sends a data or
    # header frame: on a quiet stream that is every ping after the second. 0 lifts that limit.
    ("grpc.http2.max_pings_without_data", 0),
)
# Codes after which the same call may succeed later, or on another node.
RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED,
                       grpc.StatusCode.ABORTED, grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL})


class ApiUnavailable(Exception):
    """The API could not be reached, or could not answer now: worth retrying (or another node)."""


class JoinRefused(Exception):
    """The node refused the join (wrong cluster key, malformed request...): retrying will not help."""


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise settings.ConfigError(f"TLS file {path}: {exc.strerror}") from None


def _split_tcp(address: str) -> tuple[str, int]:
    """(host, port) of a TCP address; an unspecified host (0.0.0.0, ::) means this host."""
    host, sep, port = address.removeprefix("tcp://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise settings.ConfigError(f"API address {address!r}: expected tcp://HOST:PORT or unix:///PATH")
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host, int(port)  # a DNS name
    if ip.is_unspecified:
        host = "127.0.0.1" if ip.version == 4 else "[::1]"
    return host, int(port)


def normalize(address: str) -> str:
    """``address`` as :func:`dial` reaches it: unix:///PATH, or tcp://HOST:PORT (0.0.0.0 and :: mean this host)."""
    if address.startswith("unix://"):
        return address
    host, port = _split_tcp(address)
    return f"tcp://{host}:{port}"


def _certificate_name(pem: bytes) -> str:
    """A name the certificate is valid for (first DNS name, else IP address, else common name)."""
    from cryptography import x509  # only --skip-verify needs it: not loaded (~7 MB) otherwise
    from cryptography.x509.oid import NameOID

    certificate = x509.load_pem_x509_certificate(pem)
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for kind in (x509.DNSName, x509.IPAddress):
            if values := names.get_values_for_type(kind):
                return str(values[0])
    except x509.ExtensionNotFound:
        pass
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(common_names[0].value) if common_names else ""


def _presented_certificate(host: str, port: int, tls: TlsOptions) -> bytes:
    """The certificate the server presents, unverified (for skip-verify: it becomes the only trusted one)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if tls.cert is not None:  # a server requiring client certificates may end the handshake without one
        context.load_cert_chain(tls.cert, tls.key)
    with socket.create_connection((host.strip("[]"), port), timeout=CONNECT_TIMEOUT) as raw:
        with context.wrap_socket(raw, server_hostname=host.strip("[]")) as wrapped:
            return ssl.DER_cert_to_PEM_cert(wrapped.getpeercert(binary_form=True)).encode()


async def _credentials(tls: TlsOptions, host: str, port: int) -> tuple[grpc.ChannelCredentials, list]:
    """Channel credentials and extra channel options for ``tls``."""
    options = []
    if tls.skip_verify:
        try:
            roots = await asyncio.to_thread(_presented_certificate, host, port, tls)
        except OSError as exc:
            raise ApiUnavailable(f"cannot fetch the TLS certificate of {host}:{port}: {exc}") from None
        options.append(("grpc.ssl_target_name_override", _certificate_name(roots)))
    else:
        roots = _read(tls.ca_cert) if tls.ca_cert else None
    chain = _read(tls.cert) if tls.cert else None
    key = _read(tls.key) if tls.key else None
    return grpc.ssl_channel_credentials(roots, key, chain), options


class _OperatorProof(grpc.aio.UnaryUnaryClientInterceptor):
    """Adds a cluster-key proof of the call to every unary call (ignored where none is needed)."""

    def __init__(self, cluster_key: bytes) -> None:
        self._cluster_key = cluster_key

    async def intercept_unary_unary(self, continuation, client_call_details, request):
        method = client_call_details.method
        method = method.decode() if isinstance(method, bytes) else method
        proof = auth.sign_operator_call(self._cluster_key, method, auth.message_payload(request))
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()), (auth.PROOF_HEADER, proof.to_header()))
        return await continuation(client_call_details._replace(metadata=metadata), request)


@asynccontextmanager
async def dial(address: str, tls: TlsOptions | None = None, *,
               cluster_key: bytes | None = None) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the API at ``address``, closed on exit; calls are signed when ``cluster_key`` is given."""
    interceptors = [_OperatorProof(cluster_key)] if cluster_key else None
    if address.startswith("unix://"):
        channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS, interceptors=interceptors)
    else:
        host, port = _split_tcp(address)
        target = f"{host}:{port}"
        if tls is not None and tls.enabled:
            credentials, options = await _credentials(tls, host, port)
            channel = grpc.aio.secure_channel(target, credentials, options=[*CHANNEL_OPTIONS, *options],
                                              interceptors=interceptors)
        else:
            channel = grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS, interceptors=interceptors)
    try:
        yield channel
    finally:
        await channel.close()


def describe(error: grpc.aio.AioRpcError, address: str) -> str:
    """One line about a failed call, for people."""
    return f"{address}: {error.details() or 'no details'} ({error.code().name})"


async def join(address: str, cluster_key: bytes, *, node_id: str, name: str, public_key: str, endpoint: str,
               grpc_address: str, tls: TlsOptions | None = None,
               timeout: float = CALL_TIMEOUT) -> heimdall_pb2.JoinResponse:
    """Join the cluster through the node at ``address``, proving the cluster key; its answer."""
    request = heimdall_pb2.JoinRequest(node_id=node_id, name=name, public_key=public_key, endpoint=endpoint,
                                       grpc_address=grpc_address)
    auth.sign_join(cluster_key, request)
    async with dial(address, tls) as channel:
        try:
            return await heimdall_pb2_grpc.HeimdallStub(channel).Join(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            error = ApiUnavailable if exc.code() in RETRYABLE else JoinRefused
            raise error(describe(exc, address)) from None
