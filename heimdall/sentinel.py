"""Redis Sentinel, the election engine: its config file, what it says, and how we steer it.

Every node's heimdall-elector runs one sentinel (``redis-server CONF --sentinel``,
the same binary as the store) on its tunnel address. The sentinels watch the
master's Redis, agree by majority that it is down, and promote the best replica
(lowest replica-priority, the "oldest sibling"; then the most data) under a
new config epoch; they re-point the other replicas themselves. The electors
only keep each sentinel configured (what to monitor, the quorum) and turn the
outcome into the master record every daemon follows.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from heimdall.identity import write_atomic

MASTER_NAME = "heimdall"  # the name the sentinels monitor the cluster's master under
FAILOVER_TIMEOUT_MS = 3000  # a failover that stalls (e.g. a split vote) is retried after twice this
SWITCH_EVENTS = ("+switch-master", "+promoted-slave")  # the first names a new master; the second is sooner


def majority(voters: int) -> int:
    """Votes needed out of ``voters`` sentinels: more than half."""
    return max(1, voters) // 2 + 1


def sentinel_id(host_id: str) -> str:
    """A stable 40-hex sentinel ID for a host, so a rewritten config keeps its identity among the others."""
    return hashlib.sha1(f"heimdall-sentinel/{host_id}".encode()).hexdigest()


@dataclass(frozen=True)
class SentinelConfig:
    port: int
    data_dir: Path
    password: str  # for clients, for the other sentinels and for the monitored Redis servers
    announce_ip: str  # the address the other sentinels and the nodes reach this one on
    myid: str
    master_ip: str
    redis_port: int
    quorum: int
    down_after_ms: int
    mode_args: tuple[str, ...] = ("--sentinel",)

    @property
    def config_path(self) -> Path:
        return self.data_dir / "sentinel.conf"

    @property
    def bind(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(("127.0.0.1", self.announce_ip)))

    def render(self) -> str:
        """The config a sentinel starts from; it appends what it learns (other sentinels, epochs)."""
        return "\n".join([
            "# Written by heimdall-elector at each start of the sentinel; Sentinel rewrites it as it learns.",
            f"port {self.port}",
            f"bind {' '.join(self.bind)}",
            f"requirepass {self.password}",
            f"dir {self.data_dir}",
            "daemonize no",
            'logfile ""',
            f"sentinel myid {self.myid}",
            f"sentinel announce-ip {self.announce_ip}",
            f"sentinel announce-port {self.port}",
            "sentinel resolve-hostnames no",
            f"sentinel sentinel-pass {self.password}",
            *monitor_lines(self),
        ]) + "\n"

    def write(self) -> Path:
        write_atomic(self.config_path, self.render(), 0o600)
        return self.config_path


def monitor_lines(config: SentinelConfig) -> list[str]:
    """How one sentinel watches the cluster's master (config-file form of :func:`monitor_commands`)."""
    return [" ".join(("sentinel", *command)) for command in monitor_commands(config)]


def monitor_commands(config: SentinelConfig) -> list[tuple[str, ...]]:
    """SENTINEL MONITOR and SET arguments: watch the master, authenticate, call it down fast."""
    name = MASTER_NAME
    return [
        ("monitor", name, config.master_ip, str(config.redis_port), str(config.quorum)),
        ("auth-pass", name, config.password),
        ("down-after-milliseconds", name, str(config.down_after_ms)),
        ("failover-timeout", name, str(FAILOVER_TIMEOUT_MS)),
        ("parallel-syncs", name, "64"),  # every replica re-points at once: they are few and small
    ]


@dataclass(frozen=True)
class MasterView:
    """What one sentinel believes about the master (``SENTINEL MASTER heimdall``)."""

    ip: str
    port: int
    config_epoch: int
    flags: frozenset[str]
    quorum: int

    @classmethod
    def from_reply(cls, reply: list | dict) -> MasterView:
        fields = reply if isinstance(reply, dict) else dict(zip(reply[::2], reply[1::2]))
        return cls(ip=str(fields["ip"]), port=int(fields["port"]), config_epoch=int(fields["config-epoch"]),
                   flags=frozenset(str(fields["flags"]).split(",")), quorum=int(fields["quorum"]))

    @property
    def down(self) -> bool:
        return bool(self.flags & {"s_down", "o_down", "disconnected"})


def switched_to(channel: str, data: str) -> str | None:
    """The new master's IP named by a sentinel event of ours (see SWITCH_EVENTS), else None.

    +switch-master <name> <old ip> <old port> <new ip> <new port>
    +promoted-slave slave <ip:port> <ip> <port> @ <name> <master ip> <master port>
    """
    words = data.split()
    if channel == "+switch-master" and len(words) == 5 and words[0] == MASTER_NAME:
        return words[3]
    if channel == "+promoted-slave" and len(words) == 8 and words[0] == "slave" and words[5] == MASTER_NAME:
        return words[2]
    return None


@dataclass(frozen=True)
class SentinelUrl:
    """``sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/SERVICE``: a Redis behind its owner's Sentinel
    (``--redis-url``); PASSWORD, if given, is the Redis servers' and the sentinels' alike."""

    sentinels: tuple[tuple[str, int], ...]
    service: str
    password: str | None

    @classmethod
    def parse(cls, url: str) -> SentinelUrl:
        parts = urlsplit(url)
        if parts.scheme != "sentinel":
            raise ValueError("not a sentinel:// URL")
        credentials, _, hosts = parts.netloc.rpartition("@")
        sentinels = []
        for item in hosts.split(","):
            host, sep, port = item.rpartition(":")
            if not sep or not port.isdigit() or not 1 <= int(port) <= 65535 or not host:
                raise ValueError(f"{item!r}: expected HOST:PORT of a sentinel")
            sentinels.append((host.strip("[]"), int(port)))
        service = parts.path.strip("/")
        if not service or "/" in service:
            raise ValueError("expected the master's service name after the hosts: sentinel://HOST:PORT/NAME")
        password = unquote(credentials.partition(":")[2]) if credentials else None
        return cls(tuple(sentinels), service, password or None)
