"""Heimdall gateway nodes and access-only peers on simulated hosts: config, daemons, what tests look at.

Each LabNode writes its host's /etc/heimdall (config + cluster key, 0600), then
runs the real daemons (the venv's console scripts) on that host, one log file
per daemon; a LabPeer does the same for heimdall-peer. Shared by the
integration tests, the demo and the benchmarks.
"""
from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterable

from heimdall import cluster
from heimdall.lab.hosts import Host
from heimdall.state import keys
from heimdall.wg import keys as wg_keys

NODE_DAEMONS = ("heimdall-store", "heimdall-wg", "heimdall-dns", "heimdall-api", "heimdall-elector")
IFNAME = "darknet"
REDIS_PORT = 16379
SENTINEL_PORT = 26379
OPERATOR_SOCKET = "/run/heimdall/api.sock"
BIN = Path(sys.executable).parent


class NodeError(AssertionError):
    """A lab node did not reach the expected state in time (the message says which, with logs)."""


def wait_until(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; NodeError naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except NodeError:
            raise
        except Exception as exc:  # noqa: BLE001 - a probe that fails now may succeed later
            last_error = exc
        time.sleep(interval)
    raise NodeError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (last: {last_error})"
                                                                             if last_error else ""))


class _OnHost:
    """Something running on a simulated host."""

    host: Host

    def pings(self, address: str, count: int = 1, wait: float = 1) -> bool:
        """True if ``address`` answers ``count`` pings from this host."""
        return self.host.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", str(wait), address],
                             check=False).returncode == 0

    def wg_peers(self) -> dict[str, list[str]]:
        """{public key: allowed IPs} of the host's interface, from `wg show dump`."""
        lines = self.host.run(["wg", "show", IFNAME, "dump"]).stdout.splitlines()[1:]
        return {f[0]: sorted(f[3].split(",")) if f[3] != "(none)" else [] for f in (l.split("\t") for l in lines)}

    @property
    def private_key(self) -> str:
        return self.host.path("/var/lib/heimdall/wireguard.key").read_text().strip()

    @property
    def public_key(self) -> str:
        return wg_keys.public_key(self.private_key)


class LabNode(_OnHost):
    """One gateway node on ``host``; ``join`` names the node whose API it joins through."""

    def __init__(self, host: Host, cluster_key: str, log_dir: Path, join: LabNode | None = None,
                 settings: dict[str, str] | None = None) -> None:
        self.host = host
        self.name = host.name
        self.cluster_key = cluster_key
        self.log_dir = log_dir
        self.join = join
        self.settings = settings or {}
        self.procs: dict[str, subprocess.Popen] = {}
        self.starts: dict[str, int] = {}  # how many times each daemon was started (logs are appended to)
        self._write_config()

    def _write_config(self) -> None:
        conf = {"name": self.name, "cluster-key-file": "/etc/heimdall/cluster.key", "debug": "true",
                "node-interface": "eth0", **self.settings}
        if self.join is not None:
            conf["peer"] = node_addr(self.join)
        key_file = self.host.path("/etc/heimdall/cluster.key")
        key_file.touch(mode=0o600)
        key_file.write_text(self.cluster_key + "\n")
        self.host.path("/etc/heimdall/heimdall.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))

    # -- daemons ---------------------------------------------------------------------------
    def start(self, daemons: tuple[str, ...] = NODE_DAEMONS) -> LabNode:
        for daemon in daemons:
            self.start_daemon(daemon)
        return self

    def start_daemon(self, daemon: str) -> subprocess.Popen:
        proc = self.host.spawn([str(BIN / daemon)], log=self.log_dir / f"{self.name}.{daemon}.log")
        self.procs[daemon] = proc
        self.starts[daemon] = self.starts.get(daemon, 0) + 1
        return proc

    def signal_daemon(self, daemon: str, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        """Send ``sig`` to a daemon (by PID); for SIGTERM/SIGKILL wait for its exit and return the status."""
        proc = self.procs[daemon]
        proc.send_signal(sig)
        if sig in (signal.SIGTERM, signal.SIGKILL):
            return proc.wait(timeout)
        return None

    def stop(self) -> None:
        for daemon in reversed(list(self.procs)):
            if self.procs[daemon].poll() is None:
                self.signal_daemon(daemon)

    def restart(self, daemons: tuple[str, ...], settings: dict[str, str] | None = None) -> None:
        """Stop ``daemons`` (SIGTERM), apply new ``settings`` to the config file, start them again."""
        for daemon in daemons:
            self.signal_daemon(daemon)
        self.settings.update(settings or {})
        self._write_config()
        for daemon in daemons:
            self.start_daemon(daemon)

    def log(self, daemon: str) -> str:
        path = self.log_dir / f"{self.name}.{daemon}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return "\n".join(f"--- {self.name} {d} ---\n{self.log(d)[-4000:]}" for d in self.procs)

    # -- what tests look at ----------------------------------------------------------------
    def membership(self) -> dict | None:
        path = self.host.path("/var/lib/heimdall/membership.json")
        return json.loads(path.read_text()) if path.exists() else None

    @property
    def node_id(self) -> str:
        return self.host.path("/var/lib/heimdall/node.id").read_text().strip()

    @property
    def tunnel_address(self) -> str:
        return str(ipaddress.ip_network(self.membership()["subnet"])[1])

    def redis(self, *args: str, check: bool = True) -> str:
        """redis-cli against this node's own Redis, inside the host."""
        password = cluster.redis_password(self.cluster_key.encode())
        out = self.host.run(["redis-cli", "--no-auth-warning", "-a", password, "-p", str(REDIS_PORT), *args],
                            check=check)
        return out.stdout

    def sentinel(self) -> dict[str, str]:
        """This host's sentinel's view of the master (SENTINEL MASTER heimdall); {} if it does not answer."""
        password = cluster.redis_password(self.cluster_key.encode())
        out = self.host.run(["redis-cli", "--no-auth-warning", "-a", password, "-p", str(SENTINEL_PORT),
                             "SENTINEL", "MASTER", "heimdall"], check=False).stdout.splitlines()
        return dict(zip(out[::2], out[1::2]))

    def redis_dump(self) -> str:
        """Every key of this node's Redis with its whole value, as text (for scanning it for secrets)."""
        dump = []
        for key in self.redis("--scan").split():
            command = {"hash": "HGETALL", "set": "SMEMBERS", "string": "GET"}[self.redis("TYPE", key).strip()]
            dump.append(key + "\n" + self.redis(command, key))
        return "\n".join(dump)

    def api(self, method: str, request, timeout: float | None = None):
        """Call ``method`` of this node's API over its operator socket, from outside the host.

        Without a CLI starting up first, so benchmarks time the call itself.
        """
        from heimdall.api import client
        from heimdall.api.v1 import heimdall_pb2_grpc

        async def call():
            async with client.dial(f"unix://{self.host.path(OPERATOR_SOCKET)}") as channel:
                stub = heimdall_pb2_grpc.HeimdallStub(channel)
                return await getattr(stub, method)(request, timeout=timeout or client.CALL_TIMEOUT)

        return asyncio.run(call())

    def hctl(self, *args: str) -> subprocess.CompletedProcess:
        """Run ``hctl ARGS`` on this node's host (over its operator socket unless ARGS say otherwise)."""
        return self.host.run([str(BIN / "hctl"), *args], check=False)

    def replication(self) -> dict[str, str]:
        return dict(line.split(":", 1) for line in self.redis("INFO", "replication").splitlines() if ":" in line)

    def is_replica_of(self, master: LabNode) -> bool:
        info = self.replication()
        return (info.get("role") == "slave" and info.get("master_host") == master.tunnel_address
                and info.get("master_link_status") == "up")

    def ifindex(self) -> int:
        return int(self.host.run(["cat", f"/sys/class/net/{IFNAME}/ifindex"]).stdout)

    def wait_member(self, timeout: float = 30) -> LabNode:
        wait_until(lambda: self._alive() and self.membership() is not None, timeout,
                   f"{self.name} to become a member\n{self.logs()}")
        return self

    def wait_serving(self, timeout: float = 30) -> LabNode:
        """Wait until the last heimdall-api started serves (once the local Redis holds this node's record)."""
        started = self.starts["heimdall-api"]
        wait_until(lambda: self._alive() and self.log("heimdall-api").count("serving on") >= started, timeout,
                   f"{self.name}'s API to serve\n{self.logs()}")
        return self

    def _alive(self) -> bool:
        dead = {d: p.returncode for d, p in self.procs.items() if p.poll() is not None}
        if dead:
            raise NodeError(f"{self.name}: daemons exited: {dead}\n{self.logs()}")
        return True


class LabPeer(_OnHost):
    """An access-only peer on ``host`` running heimdall-peer against ``nodes`` (in that order)."""

    def __init__(self, host: Host, peer_id: str, nodes: list[LabNode], log_dir: Path,
                 settings: dict[str, str] | None = None) -> None:
        self.host = host
        self.name = host.name
        self.peer_id = peer_id
        self.log_dir = log_dir
        self.proc: subprocess.Popen | None = None
        # A repeatable option is one line holding a list: a repeated line would keep only the last value.
        conf = {"id": peer_id, "name": host.name, "debug": "true", "update-interval": "30",
                "node-addr": f"[{', '.join(node_addr(n) for n in nodes)}]", **(settings or {})}
        self.host.path("/etc/heimdall/heimdall.conf").write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))

    def start(self) -> LabPeer:
        self.proc = self.host.spawn([str(BIN / "heimdall-peer")], log=self.log_dir / f"{self.name}.heimdall-peer.log")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)

    def log(self) -> str:
        path = self.log_dir / f"{self.name}.heimdall-peer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def logs(self) -> str:
        return f"--- {self.name} heimdall-peer ---\n{self.log()[-4000:]}"

    def connections(self) -> list[str]:
        """The nodes (gRPC addresses) heimdall-peer connected its control stream to, in order."""
        return re.findall(r"heimdall-peer: connected to (\S+)$", self.log(), re.M)

    def restart(self) -> None:
        """Stop heimdall-peer and start it again: it reconnects to its first node (the tunnels stay up)."""
        self.stop()
        self.start()

    @property
    def address(self) -> str | None:
        """The peer's tunnel address (from the peer network), once a node has given it one."""
        out = self.host.run(["ip", "-4", "-o", "addr", "show", "dev", IFNAME], check=False).stdout.split()
        return out[out.index("inet") + 1].split("/")[0] if "inet" in out else None

    def reaches(self, nodes: list[LabNode]) -> bool:
        """True if every node's tunnel address answers this peer."""
        return all(self.pings(n.tunnel_address, wait=0.5) for n in nodes)


def start_nodes(lab, key: str, logs: Path, names: tuple[str, ...], settings: dict[str, str] | None = None
                ) -> list[LabNode]:
    """Gateway nodes on new hosts of ``lab``: ``names[0]`` bootstraps, the others join it; returns once
    every node's API serves. (A failure midway leaves the rest to ``lab``'s cleanup.)"""
    first = LabNode(lab.add_host(names[0]), key, logs, settings=settings).start().wait_member()
    nodes = [first] + [LabNode(lab.add_host(name), key, logs, join=first, settings=settings).start().wait_member()
                       for name in names[1:]]
    for node in nodes:
        node.wait_serving()
    return nodes


def start_peer(lab, name: str, peer_id: str, nodes: list[LabNode], logs: Path) -> LabPeer:
    """An access-only peer on a new host, authorized (through ``nodes[0]``) and connecting to ``nodes`` in
    that order; returns once it reaches every one."""
    authorized = nodes[0].hctl("peers", "authorize", peer_id)
    if authorized.returncode != 0:
        raise NodeError(f"cannot authorize {peer_id}: {authorized.stderr}")
    peer = LabPeer(lab.add_host(name), peer_id, nodes, logs).start()
    wait_until(lambda: peer.reaches(nodes), 30, f"{name} to reach every node\n{peer.logs()}")
    return peer


@contextlib.contextmanager
def stopping(nodes: list[LabNode], peers: Iterable[LabPeer] = ()):
    """On the way out, stop ``peers`` then ``nodes``, as they are by then (a test may add some)."""
    try:
        yield
    finally:
        for member in [*peers, *nodes]:
            member.stop()


def elections_ready(nodes: list[LabNode], voters: int | None = None) -> bool:
    """Every node's sentinel knows every other voter and every replica, and they agree on the master
    (a sentinel learns of a new replica from the master's INFO, every 10 s)."""
    voters = voters or len(nodes)
    views = [n.sentinel() for n in nodes]
    return (all(v.get("num-other-sentinels") == str(voters - 1) and v.get("num-slaves") == str(len(nodes) - 1)
                and v.get("flags") == "master" for v in views)
            and len({v.get("ip") for v in views}) == 1)


def the_master(nodes: list[LabNode]) -> LabNode:
    """The one node whose Redis is master, every other replicating it and every record naming it."""
    masters = [n for n in nodes if n.replication().get("role") == "master"]
    if len(masters) != 1:
        raise NodeError(f"{len(masters)} masters: {[n.name for n in masters]}")
    master = masters[0]
    if not all(n.is_replica_of(master) for n in nodes if n is not master):
        raise NodeError(f"not every node replicates {master.name}")
    records = {n.redis("HGET", keys.MASTER, "node_id").strip() for n in nodes}
    if records != {master.node_id}:
        raise NodeError(f"the nodes' master records name {records}, not {master.name}")
    return master


def settled_on_one_master(nodes: list[LabNode]) -> LabNode | None:
    try:
        return the_master(nodes)
    except NodeError:
        return None


class AckedWriter(threading.Thread):
    """Authorizes peer IDs one after another through ``node``'s API, noting which ones it acknowledged."""

    def __init__(self, node: LabNode, prefix: str) -> None:
        super().__init__(daemon=True)
        self.node, self.prefix = node, prefix
        self.acknowledged: list[tuple[float, str]] = []
        self.refused = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        from heimdall.api.v1 import heimdall_pb2 as pb

        n = 0
        while not self._stop_event.is_set():
            peer_id = f"{self.prefix}-{n}"
            try:
                self.node.api("AuthorizePeer", pb.AuthorizePeerRequest(peer_id=peer_id), timeout=2)
                self.acknowledged.append((time.time(), peer_id))
                n += 1
            except Exception:  # noqa: BLE001 - refused (e.g. during a failover): retried with the same ID
                self.refused += 1
                time.sleep(0.05)

    def acknowledged_after(self, moment: float) -> bool:
        return any(t > moment for t, _ in self.acknowledged)

    def stop(self) -> list[str]:
        self._stop_event.set()
        self.join(30)
        return [peer_id for _, peer_id in self.acknowledged]


def node_addr(node: LabNode) -> str:
    """The gRPC address peers and hctl reach ``node`` on."""
    return f"tcp://{node.host.underlay_ip}:9000"


def new_cluster_key() -> str:
    return secrets.token_urlsafe(32)
