"""WireGuard tunnels between simulated hosts, and ping flows that count lost packets.

Driven from outside the hosts through ``heimdall.lab.wgctl``; shared by the
integration tests and the demo. Host N (underlay 192.0.2.N) owns the subnet
10.N.0.0/16 and the tunnel address 10.N.0.1, as a Heimdall node would.
"""
from __future__ import annotations

import json
import re
import signal
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from heimdall.lab.cluster import wait_until
from heimdall.lab.hosts import Host
from heimdall.lab.wgctl import KEY_FILE
from heimdall.wg import keys

IFNAME = "darknet"
PORT = 10100
LIVE_FLOW_SECONDS = 120  # a flow that assert_no_loss stops: longer than any disruption a test makes


class TunnelHost:
    """A host with (or about to have) a WireGuard interface. Its key is provisioned
    into the host's key file at once, so its public key is known before ``up()``."""

    def __init__(self, host: Host, backend: str = "auto") -> None:
        self.host = host
        self.backend = backend
        self.public_key = keys.public_key(keys.load_or_create_private_key(host.path(str(KEY_FILE))))
        number = int(host.underlay_ip.rsplit(".", 1)[1])
        self.tunnel_ip = f"10.{number}.0.1"
        self.subnet = f"10.{number}.0.0/16"

    def command(self, action: str, *args: str) -> list[str]:
        """The wgctl command line for ``action``, to run (or spawn) on this host."""
        return [sys.executable, "-m", "heimdall.lab.wgctl", IFNAME, action, "--backend", self.backend, *args]

    def up_command(self, *args: str) -> list[str]:
        return self.command("up", "--address", f"{self.tunnel_ip}/32", "--port", str(PORT), *args)

    def wgctl(self, action: str, input: str | None = None, check: bool = True):
        return self.host.run(self.command(action), input=input, check=check)

    def up(self) -> dict:
        """Create (or adopt) and configure the interface; {"ifindex", "kind", "public_key"}."""
        return json.loads(self.host.run(self.up_command()).stdout)

    def set_peers(self, others: list[TunnelHost]) -> dict:
        """Make ``others`` exactly this host's peers; {"ifindex", "plan", "seconds"}."""
        return json.loads(self.wgctl("peers", input=json.dumps([o.as_peer() for o in others])).stdout)

    def show(self) -> dict:
        return json.loads(self.wgctl("show").stdout)

    def as_peer(self) -> dict:
        return {"public_key": self.public_key, "allowed_ips": [self.subnet],
                "endpoint": f"{self.host.underlay_ip}:{PORT}"}

    def ping(self, other: TunnelHost, count: int = 3) -> str:
        """Ping ``other``'s tunnel address; the summary line. Raises CommandFailed on any loss."""
        out = self.host.run(["ping", "-n", "-q", "-c", str(count), "-i", "0.05", "-W", "2", other.tunnel_ip])
        return out.stdout.strip().splitlines()[-2]


class PingFlow:
    """``ping`` every 50 ms (or ``interval`` s) from a host, in the background.

    It sends a fixed count and ends by itself: a ping stopped by a signal counts
    its last echo, still in flight, as lost. Each reply is logged with its
    arrival time (``ping -D``), so :meth:`reply_times` tells when a path stopped
    (or started) answering.
    """

    INTERVAL = 0.05

    def __init__(self, host: Host, destination: str, seconds: float, log: Path, interval: float = INTERVAL) -> None:
        self.log = log
        count = str(round(seconds / interval))
        self.proc = host.spawn(["ping", "-n", "-D", "-i", str(interval), "-c", count, "-W", "1", destination],
                               log=log)

    def running(self) -> bool:
        return self.proc.poll() is None

    def wait_answered(self, timeout: float = 10) -> PingFlow:
        """Wait for the first answer, so a disruption that follows starts on a working path."""
        wait_until(self.reply_times, timeout, f"{self.log.name} to be answered")
        return self

    def wait(self) -> tuple[int, int]:
        """Wait for the end; (sent, received)."""
        self.proc.wait(timeout=60)
        text = self.log.read_text()
        found = re.search(r"(\d+) packets transmitted, (\d+) received", text)
        if not found:
            raise RuntimeError(f"no ping summary in {self.log}: {text.strip()!r}")
        return int(found[1]), int(found[2])

    def stop(self) -> tuple[int, int]:
        """End the flow now; (sent, received) up to its last answer.

        The echoes still in flight when it stops are not counted (``wait`` would
        count them as lost): a lost echo shows as a gap before a later answer, so
        stop only once answers have come after what the flow is meant to cover.
        """
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        answered = {int(seq) for seq in re.findall(r"bytes from .* icmp_seq=(\d+)", self.log.read_text())}
        if not answered:
            return self.wait()
        return max(answered), len(answered)

    def reply_times(self) -> list[float]:
        """The unix times replies arrived at, so far."""
        return [float(t) for t in re.findall(r"^\[(\d+\.\d+)\] \d+ bytes from", self.log.read_text(), re.M)]

    def unanswered_by(self) -> float:
        """A unix time by which the path had stopped answering (for a flow that ended without answers).

        The last reply plus the spacing of the probes: the first probe left no
        later than that and was never answered (nor was any after it). An upper
        bound, too late by at most one spacing, never too early.
        """
        times = self.reply_times()
        if len(times) < 2:
            raise RuntimeError(f"too few answers in {self.log} to time the end")
        spacing = statistics.median(b - a for a, b in zip(times, times[1:]))
        return times[-1] + spacing


def flow_counts(flows: list[PingFlow], what: str, answers_after: int = 5, timeout: float = 30) -> dict[str, tuple[int, int]]:
    """{flow log name: (sent, received)} of ``flows`` over ``what``, which is over now.

    Each flow must still be running, or it did not cover all of ``what``: that
    raises AssertionError (size flows to outlast any disruption: they are stopped
    here, not waited out). Each is stopped once answered ``answers_after`` more
    times, so a loss at the very end shows as a gap before an answer and the
    echo still in flight is not counted as lost.
    """
    ended = [f.log.name for f in flows if not f.running()]
    assert not ended, f"{', '.join(ended)} ended before {what} was over: it went partly unobserved"
    counts = {}
    for flow in flows:
        answered = len(flow.reply_times())
        wait_until(lambda: len(flow.reply_times()) >= answered + answers_after, timeout,
                   f"{flow.log.name} to be answered again after {what}")
        counts[flow.log.name] = flow.stop()
    return counts


def assert_no_loss(flows: list[PingFlow], what: str, answers_after: int = 5, timeout: float = 30) -> None:
    """Assert that ``flows`` lost no packet while ``what`` happened (see ``flow_counts``)."""
    for name, (sent, received) in flow_counts(flows, what, answers_after, timeout).items():
        assert sent == received, f"lost {sent - received} of {sent} packets while {what} ({name})"


@dataclass(frozen=True)
class LiveChange:
    sent: int
    received: int
    add_seconds: float  # one apply_peers() call
    remove_seconds: float
    ifindexes: frozenset[int]  # of a's interface, before, after the add, after the remove
    covered: bool  # the flow was still running when the change was complete

    @property
    def lost(self) -> int:
        return self.sent - self.received


def live_peer_change(a: TunnelHost, b: TunnelHost, c: TunnelHost, log: Path, seconds: float = 5.0) -> LiveChange:
    """While ``a`` pings ``b`` through the tunnel, add ``c`` as a peer of ``a`` (and
    prove ``c`` reaches ``a``), then remove it again. ``a`` and ``b`` must be peers."""
    c.up()
    c.set_peers([a])
    before = a.show()["ifindex"]
    flow = PingFlow(a.host, b.tunnel_ip, seconds, log)
    added = a.set_peers([b, c])
    c.ping(a)
    removed = a.set_peers([b])
    covered = flow.running()
    sent, received = flow.wait()
    return LiveChange(sent, received, added["seconds"], removed["seconds"],
                      frozenset({before, added["ifindex"], removed["ifindex"]}), covered)
