"""The API client's pure parts: addresses as dialed, and which TLS settings each program uses."""
from pathlib import Path

import pytest

from heimdall import settings
from heimdall.api import client


@pytest.mark.parametrize("address, dialed", [
    ("tcp://0.0.0.0:9000", "tcp://127.0.0.1:9000"),
    ("tcp://[::]:9000", "tcp://[::1]:9000"),
    ("192.0.2.7:9000", "tcp://192.0.2.7:9000"),
    ("tcp://gw1.example.net:9000", "tcp://gw1.example.net:9000"),
    ("unix:///run/heimdall/api.sock", "unix:///run/heimdall/api.sock"),
])
def test_addresses_are_dialed_as_written_with_unspecified_hosts_meaning_this_host(address, dialed):
    assert client.normalize(address) == dialed


@pytest.mark.parametrize("address", ["tcp://host", "tcp://:9000", "tcp://host:port"])
def test_malformed_addresses_are_configuration_errors(address):
    with pytest.raises(settings.ConfigError, match="expected tcp://HOST:PORT"):
        client.normalize(address)


def load(program: str, tmp_path, *argv: str) -> settings.Config:
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    return settings.load(program, ["--config", str(empty), *argv])[0]


def test_no_tls_setting_means_plaintext(tmp_path):
    tls = client.TlsOptions.from_config(load("hctl", tmp_path))
    assert not tls.enabled


@pytest.mark.parametrize("flags", [("-c", "/c.pem", "-k", "/c.key"), ("--client-cert", "/c.pem", "--client-key", "/c.key")])
def test_hctl_and_peers_present_their_client_certificate(tmp_path, flags):
    for program in ("hctl", "heimdall-peer"):
        tls = client.TlsOptions.from_config(load(program, tmp_path, *flags, "--ca-cert", "/ca.pem",
                                                 "--node-addr", "tcp://192.0.2.1:9000"))
        assert (tls.ca_cert, tls.cert, tls.key) == (Path("/ca.pem"), Path("/c.pem"), Path("/c.key")) and tls.enabled


def test_a_node_presents_its_own_certificate_its_client_cert_being_the_ca_it_verifies_clients_with(tmp_path):
    tls = client.TlsOptions.from_config(load("heimdall-wg", tmp_path, "--cert", "/node.pem", "--key", "/node.key",
                                             "--client-cert", "/clients-ca.pem", "--ca-cert", "/ca.pem"))
    assert (tls.ca_cert, tls.cert, tls.key) == (Path("/ca.pem"), Path("/node.pem"), Path("/node.key"))


def test_skip_verify_alone_enables_tls():
    assert client.TlsOptions(skip_verify=True).enabled


def test_a_client_certificate_needs_its_key():
    with pytest.raises(settings.ConfigError, match="both"):
        client.TlsOptions(cert=Path("/c.pem"))
