"""The cluster key: loading it safely and deriving the secrets that stem from it.

The cluster key admits nodes. It lives in a root-only file, is never sent over
the network and never stored in Redis; other secrets (the Redis password, join
proofs) are derived from it with HMAC-SHA256 under distinct labels, so one
secret is all an operator distributes.
"""
from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

MIN_KEY_LENGTH = 16


class ClusterKeyError(Exception):
    """The cluster key is missing, too short or not safely stored."""


def load_cluster_key(explicit: str, key_file: Path | None) -> bytes:
    """The key from ``--cluster-key`` if given, else from ``--cluster-key-file`` (must be 0600/0400)."""
    if explicit:
        text = explicit
    elif key_file is None:
        raise ClusterKeyError("no cluster key: set --cluster-key-file (or --cluster-key)")
    else:
        try:
            mode = key_file.stat().st_mode & 0o777
        except FileNotFoundError:
            raise ClusterKeyError(f"--cluster-key-file {key_file}: no such file") from None
        if mode & 0o077:
            raise ClusterKeyError(f"--cluster-key-file {key_file}: readable by others (mode {mode:o}); chmod 600 it")
        text = key_file.read_text()
    key = text.strip().encode()
    if len(key) < MIN_KEY_LENGTH:
        raise ClusterKeyError(f"cluster key too short: at least {MIN_KEY_LENGTH} characters")
    return key


def derive(cluster_key: bytes, label: str) -> str:
    """A secret for one purpose, derived from the cluster key (hex)."""
    return hmac.new(cluster_key, b"heimdall/" + label.encode(), hashlib.sha256).hexdigest()


def redis_password(cluster_key: bytes) -> str:
    return derive(cluster_key, "redis-password")
