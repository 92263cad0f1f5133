"""The node's embedded redis-server: its config file and its process.

heimdall-store renders the config (bind to loopback and the tunnel address only,
a password derived from the cluster key, data under the data dir, instant
diskless replication), runs ``redis-server`` as a child, restarts it when it
dies, and points it at the current master with REPLICAOF. Tests and the lab
use the same class to run real servers.

A child must not outlive its daemon: an orphan keeps the port, and the daemon
started again would fail to bind it forever (systemd's cgroup kill hides this;
nothing else would). So the child is sent SIGTERM when its parent dies
(PR_SET_PDEATHSIG). A pidfile next to the config names the child, and a start
first stops the process it names if it is still there (still saving, or deaf
to SIGTERM), once /proc shows it is a redis-server run from the same config.
None of this is specific to the data server (a Sentinel can run through
RedisServerProcess too): the pidfile follows the config's name (redis.pid).
"""
from __future__ import annotations

import asyncio
import ctypes
import functools
import logging
import os
import re
import select
import shutil
import signal
from dataclasses import dataclass, field
from pathlib import Path

import redis.asyncio as aioredis

from heimdall.identity import write_atomic

log = logging.getLogger(__name__)


class RedisServerError(Exception):
    """redis-server could not be started or configured."""


@dataclass(frozen=True)
class RedisServerConfig:
    port: int
    data_dir: Path
    password: str
    bind: tuple[str, ...] = ("127.0.0.1",)
    replica_of: tuple[str, int] | None = None
    replica_priority: int = 100  # lower = preferred by Sentinel; 0 = never promoted
    persistence: bool = True
    extra: dict[str, str] = field(default_factory=dict)
    mode_args: tuple[str, ...] = ()  # redis-server's arguments after the config file (a sentinel: --sentinel)

    @property
    def config_path(self) -> Path:
        return self.data_dir / "redis.conf"

    def render(self) -> str:
        """The redis.conf text. Every line is ours; nothing is inherited from a distro default."""
        lines = [
            "# Written by heimdall-store; changes are overwritten.",
            f"port {self.port}",
            f"bind {' '.join(self.bind)}",
            "protected-mode yes",
            f"requirepass {self.password}",
            f"masterauth {self.password}",
            f"dir {self.data_dir}",
            "daemonize no",
            'logfile ""',
            # Replicas start syncing at once (Redis 7 waits 5 s by default: join time).
            "repl-diskless-sync yes",
            "repl-diskless-sync-delay 0",
            "replica-read-only yes",
            f"replica-priority {self.replica_priority}",
        ]
        if self.persistence:
            lines += ["appendonly yes", "appendfsync everysec", "save 300 1"]
        else:
            lines += ['save ""', "appendonly no"]
        if self.replica_of:
            lines.append(f"replicaof {self.replica_of[0]} {self.replica_of[1]}")
        lines += [f"{k} {v}" for k, v in self.extra.items()]
        return "\n".join(lines) + "\n"

    def write(self) -> Path:
        """Write the config 0600 (it holds the password)."""
        write_atomic(self.config_path, self.render(), 0o600)
        return self.config_path


def redis_server_binary() -> str:
    path = shutil.which("redis-server")
    if not path:
        raise RedisServerError("redis-server not found in PATH (Debian: apt-get install redis-server)")
    return path


# "4242:M 25 Nov 2026 01:03:28.831 * Ready to accept connections": pid, role, time, level mark, message.
_REDIS_LINE = re.compile(r"^\d+:[A-Z] \d{1,2} \w{3} \d{4} [\d:.]+ (?P<mark>[.*#-]) (?P<message>.*)$")
_REDIS_LEVELS = {"#": logging.WARNING, "*": logging.INFO, "-": logging.DEBUG, ".": logging.DEBUG}


def redis_log_line(line: str) -> tuple[int, str]:
    """(logging level, message) of one line redis-server wrote: its own timestamp goes, its level stays."""
    match = _REDIS_LINE.match(line)
    if match is None:
        return logging.INFO, line
    return _REDIS_LEVELS[match["mark"]], match["message"]


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_libc = ctypes.CDLL(None)  # loaded now: a forked child must not load libraries


def _die_with_parent(parent: int) -> None:
    """In the child, between fork and exec: be sent SIGTERM (redis saves and exits) when the parent dies.

    The kernel sends it when the *thread* that forked the child ends, not the
    process: asyncio.create_subprocess_exec forks from the event loop's thread,
    which lives as long as the daemon. The setting survives exec. A parent that
    died before it took effect left an orphan already: that child exits at once.
    """
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


def runs_from(cmdline: bytes, config_path: Path) -> bool:
    """True if ``cmdline`` (a /proc/PID/cmdline) is a redis-server started with ``config_path``."""
    argv = cmdline.split(b"\0")
    return os.path.basename(argv[0]) == b"redis-server" and os.fsencode(config_path) in argv[1:]


async def _stop_leftover(pidfile: Path, config_path: Path, timeout: float) -> None:
    """Stop the redis-server ``pidfile`` names if it still runs from ``config_path``: SIGTERM,
    then SIGKILL after ``timeout``. Any other process, or none, is left alone."""
    try:
        pid = int(pidfile.read_text())
        fd = os.pidfd_open(pid)  # pins the process: a PID recycled after the check is never signalled
    except (OSError, ValueError):
        return  # no pidfile, or nothing runs under that PID
    try:
        if not runs_from(_cmdline(pid), config_path):
            return
        log.warning("redis-server %d from a previous run still runs from %s: stopping it", pid, config_path)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            signal.pidfd_send_signal(fd, sig)
            if await _exited(fd, timeout):
                return
            log.warning("redis-server %d still runs %.0f s after %s", pid, timeout, sig.name)
    except ProcessLookupError:
        pass  # it exited meanwhile
    finally:
        os.close(fd)


def _cmdline(pid: int) -> bytes:
    """/proc/PID/cmdline; empty for a zombie or a process gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


async def _exited(pidfd: int, timeout: float) -> bool:
    """Wait up to ``timeout`` for the process to exit (its pidfd turns readable)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not select.select([pidfd], [], [], 0)[0]:
        if loop.time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


class RedisServerProcess:
    """One redis-server child process, started from a RedisServerConfig (or a sentinel's config).

    Its output is relayed through our logging, so under journald its lines carry
    syslog priorities (its warnings are warnings) and no second timestamp.
    Its PID is kept in ``pidfile``, next to the config.
    """

    def __init__(self, config: RedisServerConfig) -> None:
        self.config = config
        self.pidfile = config.config_path.with_suffix(".pid")
        self.process: asyncio.subprocess.Process | None = None
        self._relay: asyncio.Task | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def client(self, host: str = "127.0.0.1") -> aioredis.Redis:
        return aioredis.Redis(host=host, port=self.config.port, password=self.config.password,
                              decode_responses=True, socket_timeout=5)

    async def start(self, timeout: float = 10.0) -> None:
        await _stop_leftover(self.pidfile, self.config.config_path, timeout)
        path = self.config.write()
        # No process title of its own: /proc/PID/cmdline keeps naming our config file.
        self.process = await asyncio.create_subprocess_exec(redis_server_binary(), str(path), *self.config.mode_args,
                                                            "--set-proc-title", "no",
                                                            stdout=asyncio.subprocess.PIPE,
                                                            stderr=asyncio.subprocess.STDOUT,
                                                            preexec_fn=functools.partial(_die_with_parent,
                                                                                         os.getpid()))
        write_atomic(self.pidfile, f"{self.process.pid}\n", 0o644)
        self._relay = asyncio.ensure_future(_relay_output(self.process.stdout))
        deadline = asyncio.get_running_loop().time() + timeout
        async with self.client() as client:
            while True:
                if self.process.returncode is not None:
                    raise RedisServerError(
                        f"redis-server exited with status {self.process.returncode} (config {path})")
                try:
                    await client.ping()
                    # Another process may hold the port: then ours fails to bind and exits.
                    if (await client.info("server"))["process_id"] == self.process.pid:
                        log.info("redis-server %s listening on %s:%d", self.process.pid,
                                 ",".join(self.config.bind), self.config.port)
                        return
                except (ConnectionError, OSError, aioredis.ConnectionError, aioredis.BusyLoadingError):
                    pass
                if asyncio.get_running_loop().time() > deadline:
                    await self.stop()
                    raise RedisServerError(f"redis-server did not answer on port {self.config.port}")
                await asyncio.sleep(0.05)

    async def wait(self) -> int:
        assert self.process is not None
        status = await self.process.wait()
        if self._relay is not None:
            await self._relay  # the pipe has ended too: every last line is logged
        return status

    async def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (redis saves and exits), SIGKILL if it does not stop in time."""
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.wait(), timeout)
        except asyncio.TimeoutError:
            self.process.kill()
            await self.wait()
        self.pidfile.unlink(missing_ok=True)


async def _relay_output(stream: asyncio.StreamReader) -> None:
    """Log redis-server's lines until its output ends (it must always be read, or redis blocks)."""
    logger = logging.getLogger("redis-server")
    async for raw in stream:
        line = raw.decode(errors="replace").rstrip()
        if line:
            level, message = redis_log_line(line)
            logger.log(level, "%s", message)
