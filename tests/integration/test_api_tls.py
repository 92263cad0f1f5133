"""TLS and mutual TLS on heimdall-api's TCP listener, with a throwaway CA made for each test."""
import asyncio
import datetime
import ipaddress

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from heimdall.api import client
from heimdall.api.v1 import heimdall_pb2 as pb
from tests.integration.test_api import CLUSTER_KEY, NODE_ID, new_key, refused, running

pytestmark = pytest.mark.integration


class Authority:
    """A CA that issues certificates into ``directory`` (PEM files)."""

    def __init__(self, directory, name: str) -> None:
        self.directory = directory
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.certificate = self._builder(subject, self.key.public_key()).issuer_name(subject).add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(self.key, hashes.SHA256())
        self.path = self._write(f"{name}.crt", self.certificate.public_bytes(serialization.Encoding.PEM))

    @staticmethod
    def _builder(subject, public_key) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).public_key(public_key)
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(hours=1)))

    def _write(self, name: str, data: bytes):
        path = self.directory / name
        path.write_bytes(data)
        path.chmod(0o600)
        return path

    def issue(self, name: str, *, server: bool):
        """(certificate path, key path) for ``name``; server certificates are for 127.0.0.1."""
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key())
        builder = builder.issuer_name(self.certificate.subject).add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        return (self._write(f"{self.name}-{name}.crt", certificate.public_bytes(serialization.Encoding.PEM)),
                self._write(f"{self.name}-{name}.key", key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())))


@pytest.fixture
def pki(tmp_path):
    directory = tmp_path / "pki"
    directory.mkdir()
    ca, stranger = Authority(directory, "cluster-ca"), Authority(directory, "stranger-ca")
    return {"ca": ca, "server": ca.issue("server", server=True), "operator": ca.issue("operator", server=False),
            "stranger": stranger.issue("operator", server=False), "stranger_ca": stranger}


AUTHORIZE = pb.AuthorizePeerRequest(peer_id="laptop-1")


def test_mutual_tls_client_certificates_are_operator_credentials_and_required(redis_servers, tmp_path, pki):
    redis_config = redis_servers.start()
    cert, key = pki["server"]
    operator_cert, operator_key = pki["operator"]
    stranger_cert, stranger_key = pki["stranger"]
    ca = pki["ca"].path

    async def scenario():
        async with running(redis_config, tmp_path, "--cert", str(cert), "--key", str(key),
                           "--client-cert", str(ca)) as node:
            no_cert = await node.refusal(node.call(node.tcp, "AuthorizePeer", AUTHORIZE,
                                                   tls=client.TlsOptions(ca_cert=ca), cluster_key=CLUSTER_KEY.encode()))
            foreign = await node.refusal(node.call(node.tcp, "AuthorizePeer", AUTHORIZE, tls=client.TlsOptions(
                ca_cert=ca, cert=stranger_cert, key=stranger_key)))
            plaintext = await node.refusal(node.call(node.tcp, "AuthorizePeer", AUTHORIZE,
                                                     cluster_key=CLUSTER_KEY.encode()))
            operator = client.TlsOptions(ca_cert=ca, cert=operator_cert, key=operator_key)
            authorized = await node.call(node.tcp, "AuthorizePeer", AUTHORIZE, tls=operator)
            unverified = await node.call(node.tcp, "Status", pb.StatusRequest(), tls=client.TlsOptions(
                skip_verify=True, cert=operator_cert, key=operator_key))
            joined = await client.join(node.tcp, CLUSTER_KEY.encode(), node_id="node-2", name="gw2",
                                       public_key=new_key(), endpoint="192.0.2.2:10100",
                                       grpc_address="tcp://192.0.2.2:9000", tls=operator)
            return no_cert, foreign, plaintext, authorized, unverified, joined

    no_cert, foreign, plaintext, authorized, unverified, joined = asyncio.run(scenario())
    for error in (no_cert, foreign, plaintext):
        assert error.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails: no call is made at all
    assert authorized.peer.peer_id == "laptop-1"
    assert unverified.node_id == NODE_ID
    assert joined.master.node_id == NODE_ID


def test_server_tls_alone_leaves_operators_to_the_cluster_key(redis_servers, tmp_path, pki):
    redis_config = redis_servers.start()
    cert, key = pki["server"]
    ca = pki["ca"].path

    async def scenario():
        async with running(redis_config, tmp_path, "--cert", str(cert), "--key", str(key)) as node:
            verified = client.TlsOptions(ca_cert=ca)
            anonymous = await node.refusal(node.call(node.tcp, "AuthorizePeer", AUTHORIZE, tls=verified))
            wrong_ca = await refused(node.call(node.tcp, "Status", pb.StatusRequest(),
                                               tls=client.TlsOptions(ca_cert=pki["stranger_ca"].path),
                                               cluster_key=CLUSTER_KEY.encode()))
            signed = await node.call(node.tcp, "AuthorizePeer", AUTHORIZE, tls=verified,
                                     cluster_key=CLUSTER_KEY.encode())
            unverified = await node.call(node.tcp, "Status", pb.StatusRequest(),
                                         tls=client.TlsOptions(skip_verify=True), cluster_key=CLUSTER_KEY.encode())
            return anonymous, wrong_ca, signed, unverified

    anonymous, wrong_ca, signed, unverified = asyncio.run(scenario())
    assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED
    assert wrong_ca.code() == grpc.StatusCode.UNAVAILABLE  # the server's certificate is not trusted
    assert signed.peer.peer_id == "laptop-1" and unverified.node_id == NODE_ID
