"""Making the network's names resolvable on this host while a daemon runs, and undoing it.

Two ways, chosen by the ``dns-resolver`` setting (``auto``: the first that applies):

- **systemd-resolved** (``/etc/resolv.conf`` is its stub): split DNS. The
  WireGuard interface gets the nodes as its DNS servers and ``~DOMAIN`` as its
  routing domain, and is never the default route, so only the network's names
  go to the nodes; everything else still goes where it went. Undone with
  ``resolvectl revert``.
- **/etc/resolv.conf** otherwise: a copy of the file is kept in the data dir,
  then the file is rewritten with the nodes first (they answer the network's
  names and forward everything else), the original nameservers after them, and
  ``search DOMAIN`` ahead of the original search list; the rest is kept. It is
  written in place (the same inode: a bind-mounted or symlinked file stays
  so), and put back byte for byte on stop. A copy left by a crash is used
  again as long as the file still carries our marker; a file someone else
  rewrote since is theirs, and the old copy is dropped.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_RUN = "/run/systemd/resolve/"
BACKUP = "resolv.conf.heimdall-backup"
MARKER = "# heimdall: the network's names"


class HostDnsError(RuntimeError):
    """The host's resolver could not be changed (or restored); the message says why."""


def nameservers(text: str) -> list[str]:
    """The ``nameserver`` addresses of a resolv.conf text, in order."""
    return [fields[1] for fields in (line.split() for line in text.splitlines())
            if len(fields) >= 2 and fields[0] == "nameserver"]


def render(original: str, servers: tuple[str, ...], domain: str, backup: Path) -> str:
    """``original`` with ``servers`` first and ``domain`` searched first (see the module docstring)."""
    search: list[str] = []
    kept = []
    for line in original.splitlines():
        fields = line.split()
        if fields[:1] in (["search"], ["domain"]):
            search = fields[1:]  # the last of them wins, as in glibc
        elif fields[:1] != ["nameserver"]:
            kept.append(line)
    ours = list(servers)
    theirs = [s for s in nameservers(original) if s not in ours]
    lines = [f"{MARKER} ({domain}) come first while heimdall runs; the original is in {backup}",
             *(f"nameserver {s}" for s in ours + theirs),
             "search " + " ".join(dict.fromkeys([domain, *search])), *kept]
    return "\n".join(lines) + "\n"


def _write_in_place(path: Path, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.write(data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())


@dataclass
class ResolvConf:
    """The /etc/resolv.conf way."""

    path: Path
    backup: Path

    def original(self) -> str:
        """The file as it was before us (the current one when we have not changed it)."""
        current = self.path.read_text()
        if MARKER in current and self.backup.exists():
            return self.backup.read_text()
        return current

    def install(self, servers: tuple[str, ...], domain: str) -> None:
        if self.path.resolve().as_posix().startswith(RESOLVED_RUN):
            raise HostDnsError(f"{self.path} belongs to systemd-resolved; set dns-resolver = resolved")
        current = self.path.read_bytes()
        if MARKER.encode() not in current or not self.backup.exists():
            self.backup.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.backup.write_bytes(current)
        wanted = render(self.backup.read_text(), servers, domain, self.backup).encode()
        if wanted != current:
            _write_in_place(self.path, wanted)
            log.info("%s: nameservers %s for %s", self.path, ", ".join(servers), domain)

    def remove(self) -> None:
        if not self.backup.exists():
            return
        if MARKER.encode() in self.path.read_bytes():
            _write_in_place(self.path, self.backup.read_bytes())
            log.info("%s restored", self.path)
        else:
            log.warning("%s was rewritten by someone else meanwhile; leaving it as it is", self.path)
        self.backup.unlink()


@dataclass
class Resolved:
    """The systemd-resolved way: per-link DNS on the WireGuard interface."""

    interface: str

    def _resolvectl(self, *args: str) -> None:
        result = subprocess.run(["resolvectl", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise HostDnsError(f"resolvectl {' '.join(args)}: {result.stderr.strip()}")

    def install(self, servers: tuple[str, ...], domain: str) -> None:
        self._resolvectl("dns", self.interface, *servers)
        self._resolvectl("domain", self.interface, f"~{domain}")
        self._resolvectl("default-route", self.interface, "false")
        log.info("systemd-resolved: %s answers %s through %s", ", ".join(servers), domain, self.interface)

    def remove(self) -> None:
        self._resolvectl("revert", self.interface)

    def original(self) -> str:
        return RESOLV_CONF.read_text()


def host_resolver(mode: str, interface: str, data_dir: Path, path: Path = RESOLV_CONF) -> ResolvConf | Resolved | None:
    """How names are installed on this host (``mode`` is the dns-resolver setting); None for "none"."""
    if mode == "none":
        return None
    if mode == "resolved" or (mode == "auto" and shutil.which("resolvectl")
                              and path.resolve().as_posix().startswith(RESOLVED_RUN)):
        return Resolved(interface)
    return ResolvConf(path, Path(data_dir) / BACKUP)
