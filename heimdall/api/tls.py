"""How a program dials a node's TLS listener (kept free of gRPC: heimdall-wg reads it without loading gRPC)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from heimdall import settings


@dataclass(frozen=True)
class TlsOptions:
    """How to dial a TLS listener; with nothing set, connections are plaintext."""

    ca_cert: Path | None = None  # the CA that signed the server's certificate; None: the system's CAs
    cert: Path | None = None  # client certificate, for servers that require one (mutual TLS)
    key: Path | None = None  # its private key
    skip_verify: bool = False  # accept whatever certificate the server presents: encrypted, not authenticated

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise settings.ConfigError("a TLS client certificate needs both a certificate and its key")

    @property
    def enabled(self) -> bool:
        return bool(self.ca_cert or self.cert or self.skip_verify)

    @classmethod
    def from_config(cls, config: settings.Config) -> TlsOptions:
        """A program's options for dialing an API.

        hctl and heimdall-peer present ``--cert``/``--key`` as their client
        certificate (the original's ``-c``/``-k``; ``--client-cert``/``--client-key``
        are accepted too). A node dialing another node (joining) presents its own
        ``--cert``/``--key``: on a node ``--client-cert`` is the CA it verifies
        *its* clients with. Every program verifies the server against ``--ca-cert``.
        """
        if config.program in settings.NODE:
            cert, key = config.cert, config.key
        else:
            cert, key = config.cert or config.client_cert, config.key or config.client_key
        return cls(ca_cert=config.ca_cert, cert=cert, key=key, skip_verify=config.skip_verify)
