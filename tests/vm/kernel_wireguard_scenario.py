"""Kernel WireGuard through KernelBackend, run as root inside the test guest.

Started by tests/vm/guest.py (the guest's only job), never on a host: it
turns on forwarding in the namespace it runs in. Three network namespaces
act as hosts a, b and c, each joined by a veth pair to the guest's root
namespace, which routes between them. Each host gets a WireGuard interface,
its tunnel address and routes through the backend. a and b are peers; then,
while a 20-per-second ping flow runs from a to b, a's peer b is updated and
c is added to a (and pinged) and removed again, each change diffed and applied
as heimdall-wg does: no ping may be lost and a's interface must keep its ifindex. Prints "figure name=value unit" lines;
any failure raises, so the exit code says whether everything held.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

from heimdall.wg import keys
from heimdall.wg.kernel import KernelBackend
from heimdall.wg.model import PeerPlan, WgPeer, WireGuardError, plan_peers

PORT = 10100
FLOW_INTERVAL = 0.05  # seconds between pings of the flow
FLOW_COUNT = 60  # 3 s; the changes take under 0.5 s under emulation


@contextmanager
def inside(namespace: str):
    """Run the block in ``namespace`` (this process is single-threaded, so setns is safe)."""
    netns.pushns(namespace)
    try:
        yield
    finally:
        netns.popns()


@dataclass
class Host:
    """One namespace: underlay 192.168.N.2/24 via the root namespace, tunnel 10.N.0.1, subnet 10.N.0.0/16."""

    name: str
    number: int
    private_key: str = field(default_factory=keys.generate_private_key)
    wg: KernelBackend = field(default_factory=lambda: KernelBackend("wg0"))  # one per namespace

    @property
    def tunnel_ip(self) -> str:
        return f"10.{self.number}.0.1"

    @property
    def peer(self) -> WgPeer:
        return WgPeer(keys.public_key(self.private_key), (f"10.{self.number}.0.0/16",), f"192.168.{self.number}.2:{PORT}")

    def underlay(self, ipr: IPRoute) -> None:
        """A veth pair from the root namespace (``ipr``) into a fresh namespace."""
        netns.create(self.name)
        outside = f"veth-{self.name}"
        ipr.link("add", ifname=outside, kind="veth", peer="eth0")
        ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], net_ns_fd=self.name)
        index = ipr.link_lookup(ifname=outside)[0]
        ipr.addr("add", index=index, address=f"192.168.{self.number}.1", prefixlen=24)
        ipr.link("set", index=index, state="up")
        with inside(self.name), IPRoute() as inner:
            for ifname in ("lo", "eth0"):
                inner.link("set", index=inner.link_lookup(ifname=ifname)[0], state="up")
            eth0 = inner.link_lookup(ifname="eth0")[0]
            inner.addr("add", index=eth0, address=f"192.168.{self.number}.2", prefixlen=24)
            inner.route("add", dst="0.0.0.0/0", gateway=f"192.168.{self.number}.1")

    def tunnel(self, peers: list[Host]) -> int:
        """Interface, key, port, peers, address and routes, all through the backend."""
        with inside(self.name):
            index = self.wg.ensure_interface()
            self.wg.configure(self.private_key, PORT)
            self.wg.apply_peers(PeerPlan(add=tuple(p.peer for p in peers)))
            self.wg.set_addresses({f"{self.tunnel_ip}/32"})
            self.wg.set_routes({n for p in peers for n in p.peer.allowed_ips})
        return index

    def converge(self, *peers: WgPeer) -> None:
        """Make the interface's peers exactly ``peers`` as heimdall-wg does: diff, then apply."""
        self.wg.apply_peers(plan_peers({p.public_key: p for p in peers}, self.wg.device().peer_configs()))

    def ping(self, target: str, *args: str) -> subprocess.Popen:
        return subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.name}", "ping", "-n", "-q", *args, target],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )


def ping_summary(proc: subprocess.Popen, timeout: float) -> tuple[int, int]:
    """(transmitted, received) of a finished ping; raises with its output if it printed no summary."""
    output, _ = proc.communicate(timeout=timeout)
    found = re.search(r"(\d+) packets transmitted, (\d+) received", output)
    if not found:
        raise AssertionError(f"ping failed (exit {proc.returncode}):\n{output}")
    return int(found.group(1)), int(found.group(2))


def expect_error(action, message: str) -> None:
    try:
        action()
    except WireGuardError as exc:
        assert message in str(exc), f"expected {message!r} in {exc}"
    else:
        raise AssertionError(f"no WireGuardError ({message!r})")


def timed(action) -> float:
    """Milliseconds ``action()`` took, to 0.1 ms."""
    started = time.perf_counter()
    action()
    return round((time.perf_counter() - started) * 1000, 1)


def figure(name: str, value: float, unit: str) -> None:
    print(f"figure {name}={value} {unit}", flush=True)


def main() -> None:
    if "HEIMDALL_SCRIPT" not in os.environ:  # set by the guest's kernel command line
        sys.exit("this scenario changes the network it runs in: it runs only inside the test guest (tests/vm/guest.py)")
    with open("/proc/uptime") as uptime:
        figure("guest_ready", float(uptime.read().split()[0]), "s since boot")
    assert KernelBackend.available(), "KernelBackend.available() is False in the guest"
    a, b, c = Host("a", 1), Host("b", 2), Host("c", 3)
    with open("/proc/sys/net/ipv4/ip_forward", "w") as forwarding:
        forwarding.write("1")
    with IPRoute() as ipr:
        for host in (a, b, c):
            host.underlay(ipr)
    try:
        scenario(a, b, c)
    finally:
        for host in (a, b, c):
            with inside(host.name):
                host.wg.delete_interface()
                host.wg.delete_interface()  # idempotent
                assert host.wg.ifindex() is None
            netns.remove(host.name)


def scenario(a: Host, b: Host, c: Host) -> None:
    index = a.tunnel([b])
    b.tunnel([a])
    c.tunnel([a])
    with inside(a.name):
        assert a.wg.ensure_interface() == index, "ensure_interface did not adopt the existing interface"
        a.wg.configure(a.private_key, PORT)  # again: must leave the peers alone
        assert a.wg.device().peer_configs() == {b.peer.public_key: b.peer}
        not_wireguard = KernelBackend("eth0")
        expect_error(not_wireguard.ensure_interface, "eth0: exists as a 'veth' link")
        expect_error(not_wireguard.delete_interface, "eth0: exists as a 'veth' link")
        named_endpoint = WgPeer(keys.public_key(keys.generate_private_key()), endpoint="c.example:10100")
        expect_error(lambda: a.wg.apply_peers(PeerPlan(add=(named_endpoint,), remove=(b.peer.public_key,))),
                     "wg0: cannot add peer")
        assert a.wg.device().peer_configs() == {b.peer.public_key: b.peer}, "a failed plan changed peers"
    assert ping_summary(a.ping(b.tunnel_ip, "-c", "1", "-W", "5"), timeout=30)[1] == 1, "no reply from b"
    with inside(a.name):
        device = a.wg.device()
    status = device.peers[b.peer.public_key]
    assert device.public_key == keys.public_key(a.private_key) and device.listen_port == PORT
    assert status.last_handshake > time.time() - 60 and status.rx_bytes > 0 and status.tx_bytes > 0, status
    print(f"a <-> b: handshake, rx {status.rx_bytes} B, tx {status.tx_bytes} B", flush=True)

    flow = a.ping(b.tunnel_ip, "-i", str(FLOW_INTERVAL), "-c", str(FLOW_COUNT), "-W", "2")
    time.sleep(0.5)
    changes_started = time.perf_counter()
    b_with_route = WgPeer(b.peer.public_key, (*b.peer.allowed_ips, "10.200.0.0/24"), b.peer.endpoint)
    with inside(a.name):
        figure("kernel_peer_update", timed(lambda: a.converge(b_with_route)), "ms")
        figure("kernel_peer_add", timed(lambda: a.converge(b_with_route, c.peer)), "ms")
        a.wg.set_routes({*b.peer.allowed_ips, *c.peer.allowed_ips})
    assert ping_summary(a.ping(c.tunnel_ip, "-c", "1", "-W", "5"), timeout=30)[1] == 1, "no reply from the added peer c"
    with inside(a.name):
        assert a.wg.device().peer_configs() == {b.peer.public_key: b_with_route, c.peer.public_key: c.peer}
        figure("kernel_peer_remove", timed(lambda: a.converge(b_with_route)), "ms")
        a.wg.set_routes(set(b.peer.allowed_ips))
        assert a.wg.device().peer_configs() == {b.peer.public_key: b_with_route}
        assert a.wg.ifindex() == index, "the interface was recreated"
    figure("kernel_live_changes", round(time.perf_counter() - changes_started, 2), "s (update, add, ping, remove)")
    assert flow.poll() is None, "the ping flow ended before the peer changes were done: raise FLOW_COUNT"
    sent, received = ping_summary(flow, timeout=FLOW_COUNT * FLOW_INTERVAL + 30)
    figure("kernel_flow_lost", sent - received, f"of {sent} pings")
    assert sent == received, f"{sent - received} of {sent} pings lost during live peer changes"
    print("scenario passed", flush=True)


if __name__ == "__main__":
    main()
