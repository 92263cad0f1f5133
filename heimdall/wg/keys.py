"""WireGuard key pairs, generated and kept on the host that uses them.

The private key file is created 0600 atomically (O_EXCL on a temp name, then
link()) so it is never readable by others, not even for an instant, and two
daemons starting at once both end up with the one key that won the race.
"""
from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat



def validate_key(text: str) -> str:
    """Return ``text`` if it is a base64 WireGuard key (32 bytes), else raise ValueError."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError, TypeError):
        raise ValueError("not a WireGuard key: invalid base64") from None
    if len(raw) != 32:
        raise ValueError(f"not a WireGuard key: {len(raw)} bytes instead of 32")
    return text


def generate_private_key() -> str:
    raw = X25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def public_key(private_key: str) -> str:
    raw = base64.b64decode(validate_key(private_key))
    pub = X25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(pub).decode()


def load_or_create_private_key(path: Path) -> str:
    """Read the key at ``path``; create it (0600, parent 0700) if it does not exist."""
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise PermissionError(f"{path}: private key is readable by others (mode {mode:o}); chmod 600 it")
        return validate_key(path.read_text().strip())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = generate_private_key()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, (key + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key first: use theirs
    except FileExistsError:
        key = validate_key(path.read_text().strip())
    finally:
        os.unlink(tmp)
    return key
