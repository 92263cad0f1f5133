"""Userspace WireGuard: ``wireguard-go`` driven over its UAPI socket.

wireguard-go daemonizes itself (new session, stdio on /dev/null), so the tunnel
outlives the process that started it: a crashed or killed heimdall-wg drops no
traffic, and the next one adopts the running interface. We talk to it with
WireGuard's cross-platform interface protocol on ``/var/run/wireguard/<if>.sock``:
a ``get=1`` or ``set=1`` request of key=value lines ending in a blank line, keys
in hex, answered by ``errno=N`` (0 = success).

wireguard-go applies a ``set=1`` line by line and does not roll back when a line
fails, so every value is validated here before anything is sent: bad input is
refused whole and changes nothing.
"""
from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import time

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from heimdall.wg import keys, links
from heimdall.wg.backend import WireGuardBackend
from heimdall.wg.model import (PeerPlan, WgDevice, WgPeer, WgPeerStatus, WireGuardError, allowed_ips_change,
                                 join_endpoint, split_endpoint)

SOCKET_DIR = "/var/run/wireguard"  # fixed in wireguard-go
UAPI_TIMEOUT = 5.0  # seconds for one request; wireguard-go answers in microseconds
START_TIMEOUT = 10.0
EXIT_TIMEOUT = 5.0


# -- starting wireguard-go ------------------------------------------------------------
def under_systemd() -> bool:
    """True in a service started by a running systemd (it sets INVOCATION_ID for every unit it runs)."""
    return bool(os.environ.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system") \
        and shutil.which("systemd-run") is not None


def launch_command(binary: str, ifname: str, systemd: bool) -> list[str]:
    """How to start wireguard-go so that the tunnel outlives the daemon that starts it.

    Elsewhere it daemonizes itself. Under systemd that is not enough: a daemonized child
    stays in its starter's cgroup, so `systemctl kill`/`restart` of heimdall-wg would take
    the tunnel down with it; it runs in a unit of its own instead, in the foreground.
    """
    if not systemd:
        return [binary, ifname]
    return ["systemd-run", "--quiet", "--collect", f"--unit=heimdall-wireguard-go-{ifname}",
            f"--description=WireGuard tunnel {ifname} (wireguard-go, started by Heimdall)",
            f"--property=NetworkNamespacePath=/proc/{os.getpid()}/ns/net",  # the caller's, whichever it is
            "--setenv=WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1", binary, "-f", ifname]


# -- the UAPI text protocol (pure) ------------------------------------------------
def key_hex(key: str) -> str:
    """A base64 WireGuard key as the UAPI's hex; ValueError if it is not a key."""
    return base64.b64decode(keys.validate_key(key)).hex()


def key_base64(hex_text: str) -> str:
    raw = bytes.fromhex(hex_text)
    if len(raw) != 32:
        raise ValueError(f"not a WireGuard key: {len(raw)} bytes instead of 32")
    return base64.b64encode(raw).decode()


def _port(value: int, what: str) -> int:
    if not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{what} {value!r} is not a port number (0-65535)")
    return value


def format_endpoint(endpoint: str) -> str:
    """An endpoint as the UAPI takes it: validated and normalized (ValueError otherwise)."""
    return join_endpoint(*split_endpoint(endpoint))


def format_device_set(private_key: str | None = None, listen_port: int | None = None) -> str:
    """A ``set=1`` request for the interface's own key and port (None = leave as is)."""
    lines = ["set=1"]
    if private_key is not None:
        lines.append(f"private_key={key_hex(private_key)}")
    if listen_port is not None:
        lines.append(f"listen_port={_port(listen_port, 'listen port')}")
    return "\n".join(lines) + "\n\n"


def _peer_lines(peer: WgPeer, current: WgPeer | None = None) -> list[str]:
    """Lines that make a peer exactly ``peer``, whether it exists yet or not.

    An endpoint of None is not sent, so an endpoint WireGuard learned by roaming stays.
    ``current`` (the peer as the interface holds it) lets an update add only new
    allowed IPs instead of replacing them all (``allowed_ips_change``).
    """
    allowed_ips, replace = allowed_ips_change(peer, current)
    try:
        lines = [f"public_key={key_hex(peer.public_key)}"] + (["replace_allowed_ips=true"] if replace else [])
    except ValueError as exc:
        raise ValueError(f"peer {peer.public_key!r}: public key: {exc}") from None
    if peer.endpoint is not None:
        lines.append(f"endpoint={format_endpoint(peer.endpoint)}")
    keepalive = _port(peer.persistent_keepalive, f"peer {peer.public_key}: persistent keepalive")
    lines.append(f"persistent_keepalive_interval={keepalive}")
    lines.extend(f"allowed_ip={network}" for network in allowed_ips)
    return lines


def format_peers_set(plan: PeerPlan) -> str:
    """One ``set=1`` request carrying a whole plan; removals first, so an
    allowed IP moving from a removed peer to a new one ends up on the new one.
    The plan's ``previous`` lets updates that only add allowed IPs add just those."""
    lines = ["set=1"]
    for key in plan.remove:
        try:
            lines += [f"public_key={key_hex(key)}", "remove=true"]
        except ValueError as exc:
            raise ValueError(f"peer to remove {key!r}: {exc}") from None
    for peer in plan.add:
        lines += _peer_lines(peer)
    for peer in plan.update:
        lines += _peer_lines(peer, plan.previous.get(peer.public_key))
    return "\n".join(lines) + "\n\n"


def response_errno(text: str) -> int:
    """The errno a UAPI answer ends with; ValueError if it carries none."""
    for line in reversed(text.splitlines()):
        if line.startswith("errno="):
            return int(line.removeprefix("errno="))
    raise ValueError(f"UAPI answer without errno: {text[-200:]!r}")


def parse_device(ifname: str, text: str) -> WgDevice:
    """Turn a ``get=1`` answer into a WgDevice (its public key derived from the private one)."""
    public_key, listen_port = None, 0
    peers: dict[str, WgPeerStatus] = {}
    peer: dict | None = None

    def finish() -> None:
        if peer is not None:
            config = WgPeer(peer["key"], tuple(peer["ips"]), peer.get("endpoint"), peer.get("keepalive", 0))
            handshake = peer.get("sec", 0) + peer.get("nsec", 0) / 1e9
            peers[config.public_key] = WgPeerStatus(config, handshake, peer.get("rx", 0), peer.get("tx", 0))

    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if not sep:
            continue
        if name == "public_key":
            finish()
            peer = {"key": key_base64(value), "ips": []}
        elif peer is None:
            if name == "private_key":
                public_key = keys.public_key(key_base64(value))
            elif name == "listen_port":
                listen_port = int(value)
        elif name == "endpoint":
            peer["endpoint"] = value
        elif name == "allowed_ip":
            peer["ips"].append(value)
        elif name in _PEER_NUMBERS:
            peer[_PEER_NUMBERS[name]] = int(value)
    finish()
    return WgDevice(ifname, public_key, listen_port, peers)


_PEER_NUMBERS = {
    "last_handshake_time_sec": "sec",
    "last_handshake_time_nsec": "nsec",
    "rx_bytes": "rx",
    "tx_bytes": "tx",
    "persistent_keepalive_interval": "keepalive",
}


# -- the backend -----------------------------------------------------------------------
class UserspaceBackend(WireGuardBackend):
    """A wireguard-go interface, configured over its UAPI socket."""

    kind = "userspace"

    @staticmethod
    def available() -> bool:
        """wireguard-go is installed and this host has a TUN device to give it."""
        return shutil.which("wireguard-go") is not None and os.path.exists("/dev/net/tun")

    @property
    def socket_path(self) -> str:
        return f"{SOCKET_DIR}/{self.ifname}.sock"

    def ensure_interface(self) -> int:
        exists, answers = self.ifindex() is not None, self._socket_answers()
        if exists and not answers:
            raise WireGuardError(
                f"{self.ifname}: an interface of this name exists but no wireguard-go answers on "
                f"{self.socket_path} (a kernel WireGuard or other link?); delete it or choose the kernel backend"
            )
        if not exists:
            self._start()
        try:
            links.set_up(self.ifname)
        except NetlinkError as exc:
            raise WireGuardError(f"{self.ifname}: cannot bring the interface up: {exc}") from exc
        index = self.ifindex()
        if index is None:
            raise WireGuardError(f"{self.ifname}: interface vanished right after it was brought up")
        return index

    def configure(self, private_key: str, listen_port: int) -> None:
        """Send only what differs: re-setting the port would rebind the socket and drop packets.
        A listen port of 0 means "any": a port already chosen is kept."""
        try:
            wanted_public = keys.public_key(private_key)
        except ValueError as exc:
            raise WireGuardError(f"{self.ifname}: configuring: private key: {exc}") from exc
        current = self.device()
        new_key = private_key if current.public_key != wanted_public else None
        if listen_port == 0 and current.listen_port:
            listen_port = current.listen_port
        new_port = listen_port if listen_port != current.listen_port else None
        try:
            request = format_device_set(new_key, new_port)
        except ValueError as exc:
            raise WireGuardError(f"{self.ifname}: configuring: {exc}") from exc
        if request != "set=1\n\n":
            self._uapi(request, "setting private key and listen port")

    def device(self) -> WgDevice:
        text = self._uapi("get=1\n\n", "reading the device")
        try:
            return parse_device(self.ifname, text)
        except ValueError as exc:
            raise WireGuardError(f"{self.ifname}: reading the device: unexpected UAPI answer: {exc}") from exc

    def apply_peers(self, plan: PeerPlan) -> None:
        if not plan:
            return
        step = f"applying peers {plan.summary()}"
        try:
            request = format_peers_set(plan)
        except ValueError as exc:
            raise WireGuardError(f"{self.ifname}: {step}: {exc} (nothing was changed)") from exc
        self._uapi(request, step)

    def delete_interface(self) -> None:
        """Delete the link; wireguard-go notices, removes its socket and exits. We wait for
        that, so an ensure_interface() right after does not meet the old process."""
        index = self.ifindex()
        if index is not None:
            with IPRoute() as ipr:
                try:
                    ipr.link("del", index=index)
                except NetlinkError as exc:
                    if exc.code != 19:  # ENODEV: deleted meanwhile
                        raise WireGuardError(f"{self.ifname}: cannot delete the interface: {exc}") from exc
        deadline = time.monotonic() + EXIT_TIMEOUT
        while self._socket_answers():
            if time.monotonic() > deadline:
                raise WireGuardError(f"{self.ifname}: wireguard-go still answers on {self.socket_path} "
                                     f"{EXIT_TIMEOUT:.0f}s after its interface was deleted")
            time.sleep(0.02)

    # -- wireguard-go process and socket -------------------------------------------------
    def _start(self) -> None:
        binary = shutil.which("wireguard-go")
        if binary is None:
            raise WireGuardError(f"{self.ifname}: cannot create the interface: wireguard-go is not installed")
        # Without LOG_LEVEL the daemon child gets /dev/null for stdio; with it, it would
        # inherit our pipes and this call would wait for it forever.
        env = {k: v for k, v in os.environ.items() if k != "LOG_LEVEL"}
        env["WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD"] = "1"
        argv = launch_command(binary, self.ifname, under_systemd())
        try:
            # Daemonizing, the parent returns once the TUN device and the socket exist (the daemon
            # inherits both); systemd-run returns once its unit runs wireguard-go in the foreground.
            result = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL,
                                    capture_output=True, text=True, timeout=START_TIMEOUT)
        except subprocess.TimeoutExpired:
            raise WireGuardError(f"{self.ifname}: wireguard-go did not start within {START_TIMEOUT:.0f}s") from None
        if result.returncode != 0:
            raise WireGuardError(f"{self.ifname}: starting wireguard-go failed (exit {result.returncode}): "
                                 f"{_without_banner(result.stdout + result.stderr)}")
        deadline = time.monotonic() + START_TIMEOUT
        while not self._socket_answers():
            if time.monotonic() > deadline:
                raise WireGuardError(f"{self.ifname}: wireguard-go started but does not answer on {self.socket_path}")
            time.sleep(0.01)

    def _socket_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(self.socket_path)
            except (FileNotFoundError, ConnectionRefusedError):  # none, or left by a dead process
                return False
        return True

    def _uapi(self, request: str, step: str) -> str:
        """Send one request, return the answer; WireGuardError unless it ends in errno=0."""
        answer = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(UAPI_TIMEOUT)
                sock.connect(self.socket_path)
                sock.sendall(request.encode())
                while not answer.endswith(b"\n\n"):
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise WireGuardError(f"{self.ifname}: {step}: wireguard-go closed the socket mid-answer")
                    answer += chunk
        except OSError as exc:
            raise WireGuardError(f"{self.ifname}: {step}: UAPI socket {self.socket_path}: {exc}") from exc
        text = answer.decode()
        try:
            errno = response_errno(text)
        except ValueError as exc:
            raise WireGuardError(f"{self.ifname}: {step}: {exc}") from exc
        if errno != 0:
            raise WireGuardError(f"{self.ifname}: {step}: wireguard-go refused it "
                                 f"(errno={errno}, {os.strerror(abs(errno))})")
        return text


def _without_banner(output: str) -> str:
    """wireguard-go's output minus the boxed "use the kernel module" banner it always prints."""
    kept = [line.strip() for line in output.splitlines() if line.strip() and line.strip()[0] not in "┌│└"]
    return " / ".join(kept) or "no output"
