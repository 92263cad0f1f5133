"""What a node or peer knows about itself, kept in its data dir across restarts.

- ``node.id``: its ID (``--id``, else a UUID made once). Every daemon of the host
  reads the same file; the first to start creates it.
- ``wireguard.key``: its WireGuard private key (0600, never leaves the host).
- ``membership.json``: written by heimdall-wg once the node is a member (after
  bootstrapping or joining): its subnet and the master to replicate from. It is
  what lets heimdall-store start replicating before the local Redis has any data.
"""
from __future__ import annotations

import ipaddress
import json
import os
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path


ID_FILE = "node.id"
KEY_FILE = "wireguard.key"
MEMBERSHIP_FILE = "membership.json"


class IdentityError(Exception):
    """The data dir holds something unusable; the message names the file."""


def write_atomic(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace ``path`` with ``text`` all at once, created with ``mode`` (never readable by others in between)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def host_id(data_dir: Path, configured: str = "") -> str:
    """``configured`` if set (and remembered), else the ID kept in the data dir, else a new UUID."""
    path = Path(data_dir) / ID_FILE
    if configured:
        if not path.exists() or path.read_text().strip() != configured:
            write_atomic(path, configured + "\n", 0o644)
        return configured
    if path.exists():
        value = path.read_text().strip()
        if not value:
            raise IdentityError(f"{path} is empty; delete it or set --id")
        return value
    new = str(uuid.uuid4())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new + "\n")
    try:
        os.link(tmp, path)  # another daemon may have won the race: use its ID
    except FileExistsError:
        new = path.read_text().strip()
    finally:
        tmp.unlink()
    return new


def private_key(data_dir: Path) -> str:
    from heimdall.wg import keys  # cryptography (~7 MB) only where a key is used

    return keys.load_or_create_private_key(Path(data_dir) / KEY_FILE)


@dataclass(frozen=True)
class Membership:
    node_id: str
    subnet: str
    master_node_id: str
    master_address: str  # the master's tunnel address (its Redis listens there)

    @property
    def tunnel_address(self) -> str:
        return str(ipaddress.ip_network(self.subnet)[1])

    def save(self, data_dir: Path) -> None:
        write_atomic(Path(data_dir) / MEMBERSHIP_FILE, json.dumps(asdict(self), indent=1) + "\n", 0o644)

    @classmethod
    def load(cls, data_dir: Path) -> Membership | None:
        path = Path(data_dir) / MEMBERSHIP_FILE
        try:
            return cls(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            raise IdentityError(f"{path} is unreadable ({exc}); delete it to join again") from None
