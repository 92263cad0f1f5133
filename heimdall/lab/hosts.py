"""Simulated hosts: each its own network, mount and UTS namespace.

A host is a network namespace ``<prefix>-<name>`` plus a mount and UTS namespace
held open by a long-lived holder process (``sleep infinity``). The holder has
private tmpfs mounts on the directories a Heimdall host owns, so two hosts'
``/run/wireguard/darknet.sock`` or ``/etc/heimdall`` never collide, a private
``/etc/resolv.conf`` (this machine's is never touched), and its hostname is
the host's name. Commands enter all three with ``nsenter -t <holder>``.

The hosts share one L2 segment, 192.0.2.0/24: a bridge in a switch namespace
``<prefix>-sw`` that also holds 192.0.2.254, every host's default gateway, so
"the default route's interface" is eth0 as on a real machine. Veths are made
with ``ip -n``, so this machine's own network namespace is never touched.

Cleanup kills every process still in our namespaces, not only those we started:
wireguard-go daemonizes, and a process left behind keeps a deleted namespace
alive. Each is signalled through a pidfd after checking that it is in one of our
namespaces, so a recycled PID is never hit.
"""
from __future__ import annotations

import atexit
import ipaddress
import os
import re
import secrets
import shlex
import signal
import subprocess
import threading
import time
from pathlib import Path

UNDERLAY = "192.0.2"  # TEST-NET-1, /24; .254 is the switch
GATEWAY = f"{UNDERLAY}.254"
PRIVATE_DIRS = ("/run/wireguard", "/run/heimdall", "/etc/heimdall", "/var/lib/heimdall")
# /etc/resolv.conf is a host's own too (heimdall-peer changes it): a file on a lab-only tmpfs is
# bind-mounted over it, holding a nameserver inside the lab where nothing answers.
RESOLV_CONF = f"# a simulated host's own resolv.conf\nnameserver {GATEWAY}\n"
_LAB_FILES = "/run/heimdall-lab"
GRACE = 5.0  # seconds between SIGTERM and SIGKILL

_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_live: set[Lab] = set()
_hooks_installed = False


class LabError(RuntimeError):
    """Setting up or tearing down the simulated hosts failed."""


class CommandFailed(subprocess.CalledProcessError):
    """A command run on a host exited non-zero; the message carries the host and its stderr."""

    def __init__(self, host: str, argv: list[str], result: subprocess.CompletedProcess) -> None:
        super().__init__(result.returncode, argv, result.stdout, result.stderr)
        self.host = host

    def __str__(self) -> str:
        detail = (self.stderr or self.stdout or "").strip() or "no output"
        return f"{self.host}: `{shlex.join(self.cmd)}` exited {self.returncode}: {detail}"


class Host:
    """One simulated machine. Create it with ``Lab.add_host``."""

    def __init__(self, name: str, netns: str, underlay_ip: str) -> None:
        self.name = name
        self.netns = netns
        self.underlay_ip = underlay_ip
        self._holder: subprocess.Popen | None = None
        self._spawned: list[subprocess.Popen] = []

    def __repr__(self) -> str:
        return f"Host({self.name!r}, {self.netns}, {self.underlay_ip})"

    def run(self, argv: list[str], check: bool = True, timeout: float = 30, env: dict | None = None,
            input: str | None = None) -> subprocess.CompletedProcess:
        """Run ``argv`` on this host and wait (text mode, output captured).

        ``env`` adds to this process's environment. The working directory is "/".
        check=True raises CommandFailed (a CalledProcessError) naming the host and
        its stderr; a timeout kills the command and raises TimeoutExpired.
        """
        stdin = subprocess.DEVNULL if input is None else None
        result = subprocess.run(self._enter(argv), input=input, stdin=stdin, capture_output=True, text=True,
                                timeout=timeout, env=_environment(env))
        if check and result.returncode != 0:
            raise CommandFailed(self.name, argv, result)
        return result

    def spawn(self, argv: list[str], env: dict | None = None, log: Path | None = None) -> subprocess.Popen:
        """Start ``argv`` on this host in the background, stdout and stderr to ``log``
        (appended; discarded when None). It is stopped at cleanup: SIGTERM, then SIGKILL."""
        out = open(log, "ab") if log is not None else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(self._enter(argv), stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=_environment(env), start_new_session=True)
        finally:
            if log is not None:
                out.close()
        self._spawned.append(proc)
        return proc

    def path(self, p: str) -> Path:
        """This host's view of the file ``p`` (e.g. its private /etc/heimdall), usable from outside."""
        return Path(f"/proc/{self._holder_pid()}/root") / p.lstrip("/")

    def pids(self) -> list[int]:
        """The processes running on this host (in its network namespace), but its holder."""
        holder = self._holder_pid()
        return [pid for pid in _processes_in(_ns_identity(f"/run/netns/{self.netns}")) if pid != holder]

    def kill_all(self) -> None:
        """Stop every process on this host: those spawned (SIGTERM, then SIGKILL after
        a grace period), then whatever else runs here, such as wireguard-go daemons.
        The host itself stays usable."""
        _stop(self._spawned)
        self._spawned.clear()
        if self._holder is not None:
            _kill_namespace_processes(self.netns, spare={self._holder.pid})

    def crash(self) -> None:
        """Power loss, as far as processes go: SIGKILL every process on this host at once, no grace."""
        if self._holder is not None:
            _kill_namespace_processes(self.netns, spare={self._holder.pid}, first=signal.SIGKILL)
        for proc in self._spawned:
            proc.wait()
        self._spawned.clear()

    # -- setup and teardown, driven by Lab ------------------------------------------
    def _start_holder(self) -> None:
        script = ('set -e; hostname "$0"; for d; do mkdir -p "$d"; '
                  'mount -t tmpfs -o mode=0755 heimdall-lab "$d"; done; '
                  f'printf %s "$RESOLV" > {_LAB_FILES}/resolv.conf; mount --bind {_LAB_FILES}/resolv.conf /etc/resolv.conf; '
                  'echo ready; exec sleep infinity')
        # `ip netns exec` gives the holder a mount namespace of its own (and a /sys of this
        # netns); `unshare --uts` a hostname of its own. `ip` and `unshare` exec, so the PID stays.
        self._holder = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c", script, self.name, *PRIVATE_DIRS,
             _LAB_FILES],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_environment({"RESOLV": RESOLV_CONF}),
            start_new_session=True,
        )
        ready = self._holder.stdout.readline().strip()
        self._holder.stdout.close()
        if ready != "ready":
            self._holder.wait()
            raise LabError(f"{self.name}: cannot set up its mount namespace: {self._holder.stderr.read().strip()}")
        self._holder.stderr.close()

    def _holder_pid(self) -> int:
        if self._holder is None or self._holder.poll() is not None:
            raise LabError(f"{self.name}: the host is not running (closed, or its holder process died)")
        return self._holder.pid

    def _enter(self, argv: list[str]) -> list[str]:
        if not argv:
            raise ValueError("empty command")
        return ["nsenter", "-t", str(self._holder_pid()), "-n", "-m", "-u", "--", *map(str, argv)]

    def _stop(self) -> None:
        self.kill_all()
        if self._holder is not None:
            self._holder.kill()
            self._holder.wait()


class Lab:
    """A set of hosts on one L2 segment, all removed by ``close()``.

    ``with Lab() as lab:`` — names are ``<prefix>-<name>``, the prefix unique per
    lab ("hd" + 5 hex digits). Cleanup also runs at interpreter exit and, when no
    other handler is set, on SIGTERM.
    """

    def __init__(self) -> None:
        self.prefix = "hd" + secrets.token_hex(3)[:5]
        self.switch = f"{self.prefix}-sw"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self._closed = False
        _register(self)
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "addr", "add", f"{GATEWAY}/24", "dev", "br0")
            for link in ("lo", "br0"):
                _ip("-n", self.switch, "link", "set", link, "up")
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def add_host(self, name: str) -> Host:
        """A new host with eth0 = 192.0.2.N/24 on the shared segment, default route via .254."""
        if self._closed:
            raise LabError("the lab is closed")
        if not _NAME.fullmatch(name) or name == "sw" or name in self.hosts:
            raise ValueError(f"host name {name!r}: must be new, not 'sw', lowercase letters/digits/'-', "
                             "starting with a letter, at most 31 characters")
        number = len(self.hosts) + 1
        if number >= 254:
            raise LabError("the 192.0.2.0/24 segment is full (253 hosts)")
        host = Host(name, f"{self.prefix}-{name}", f"{UNDERLAY}.{number}")
        self.hosts[name] = host
        ns, port = host.netns, f"port{number}"
        self._add_namespace(ns)
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", ns, "addr", "add", f"{host.underlay_ip}/24", "dev", "eth0")
        for link in ("lo", "eth0"):
            _ip("-n", ns, "link", "set", link, "up")
        _ip("-n", ns, "route", "add", "default", "via", GATEWAY)
        host._start_holder()
        return host

    def add_host_behind(self, name: str, router: Host, network: str) -> Host:
        """A host on a link of its own to ``router`` (a service behind a gateway): ``router`` gets the
        network's first address on ``lan-<name>``, the new host the tenth on eth0, its default route via
        ``router``. Nothing else reaches it but through ``router``."""
        if self._closed:
            raise LabError("the lab is closed")
        if not _NAME.fullmatch(name) or name == "sw" or name in self.hosts or len(name) > 11:
            raise ValueError(f"host name {name!r}: must be new, not 'sw', lowercase letters/digits/'-', "
                             "starting with a letter, at most 11 characters")
        net = ipaddress.ip_network(network)
        gateway, address = net[1], net[10]
        host = Host(name, f"{self.prefix}-{name}", str(address))
        self.hosts[name] = host
        self._add_namespace(host.netns)
        lan = f"lan-{name}"
        _ip("-n", router.netns, "link", "add", lan, "type", "veth", "peer", "name", "eth0", "netns", host.netns)
        _ip("-n", router.netns, "addr", "add", f"{gateway}/{net.prefixlen}", "dev", lan)
        _ip("-n", router.netns, "link", "set", lan, "up")
        _ip("-n", host.netns, "addr", "add", f"{address}/{net.prefixlen}", "dev", "eth0")
        for link in ("lo", "eth0"):
            _ip("-n", host.netns, "link", "set", link, "up")
        _ip("-n", host.netns, "route", "add", "default", "via", str(gateway))
        host._start_holder()
        return host

    def close(self) -> None:
        """Stop every process in our namespaces and delete them. Safe to call twice.
        Raises LabError at the end if something could not be removed."""
        if self._closed:
            return
        self._closed = True
        problems = []
        for host in self.hosts.values():
            try:
                host._stop()
            except Exception as exc:  # keep going: the namespaces must go regardless
                problems.append(f"{host.name}: {exc}")
        for ns in reversed(self._namespaces):
            try:
                _kill_namespace_processes(ns)
                _ip("netns", "del", ns)
            except Exception as exc:
                problems.append(f"{ns}: {exc}")
        _live.discard(self)
        if problems:
            raise LabError("cleanup incomplete: " + "; ".join(problems))

    def _add_namespace(self, ns: str) -> None:
        _ip("netns", "add", ns)
        self._namespaces.append(ns)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise LabError(f"`ip {shlex.join(args)}` failed: {result.stderr.strip()}")


def _environment(extra: dict | None) -> dict:
    """Our environment plus ``extra``, minus what would tie a simulated host to this machine's
    systemd (INVOCATION_ID would make the userspace backend hand wireguard-go to it)."""
    env = {k: v for k, v in os.environ.items() if k != "INVOCATION_ID"}
    return {**env, **{k: str(v) for k, v in (extra or {}).items()}}


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM our children, SIGKILL those still running after GRACE seconds; reap all."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    deadline = time.monotonic() + GRACE
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_namespace_processes(ns: str, spare: frozenset[int] | set[int] = frozenset(),
                              first: int = signal.SIGTERM) -> None:
    """Send ``first`` to every process in netns ``ns`` but ``spare``; SIGKILL what is left after GRACE."""
    identity = _ns_identity(f"/run/netns/{ns}")
    deadline = time.monotonic() + GRACE
    sig = first
    while pids := [pid for pid in _processes_in(identity) if pid not in spare]:
        for pid in pids:
            _signal_if_in(pid, identity, sig)
        if time.monotonic() > deadline:
            if sig == signal.SIGKILL:
                raise LabError(f"processes {pids} in {ns} survive SIGKILL")
            sig, deadline = signal.SIGKILL, time.monotonic() + GRACE
        time.sleep(0.05)


def _ns_identity(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _processes_in(identity: tuple[int, int]) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if _ns_identity(f"/proc/{entry.name}/ns/net") == identity:
                    pids.append(int(entry.name))
            except OSError:  # exited, or a zombie
                continue
    return pids


def _signal_if_in(pid: int, identity: tuple[int, int], sig: int) -> None:
    """Signal ``pid`` only if it is (still) in the namespace: the pidfd pins the process
    we check, so a PID recycled meanwhile is left alone."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if _ns_identity(f"/proc/{pid}/ns/net") == identity:
            signal.pidfd_send_signal(fd, sig)
    except (OSError, ProcessLookupError):
        pass  # exited meanwhile
    finally:
        os.close(fd)


def _register(lab: Lab) -> None:
    """Close live labs at exit and on SIGTERM (then die of SIGTERM as we would have)."""
    global _hooks_installed
    if not _hooks_installed:
        _hooks_installed = True
        atexit.register(_close_live)
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, _on_sigterm)
    _live.add(lab)


def _close_live() -> None:
    for lab in list(_live):
        try:
            lab.close()
        except LabError as exc:
            print(f"heimdall.lab: {exc}", flush=True)


def _on_sigterm(signum, frame) -> None:
    _close_live()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
