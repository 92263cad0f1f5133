"""heimdall-dns on simulated hosts with the real daemons: names, forwarding, abuse, renames, the peer's resolver.

One network serves the module: an upstream host runs dnsmasq (the only
resolver the nodes forward to), node1 bootstraps, node2 joins, and a peer host
runs heimdall-peer (its /etc/resolv.conf is its own, see heimdall.lab.hosts).
Tests run in file order; the destructive ones (upstream stopped) come last.
"""
import re
import subprocess
import sys
import time

import pytest

from heimdall.lab import Lab
from heimdall.lab.cluster import LabNode, LabPeer, new_cluster_key, wait_until

pytestmark = pytest.mark.integration

PEER_ID = "laptop-1"
FORWARDED = ("www.example.lab", "192.0.2.77")
BIG = "big.example.lab"  # 100 A records: too large for UDP
BIG_COUNT = 100


class Upstream:
    """dnsmasq on its own lab host: the resolver the nodes forward to."""

    def __init__(self, host, logs) -> None:
        self.host, self.logs = host, logs
        hosts = "".join(f"10.99.{i // 200}.{i % 200 + 1} {BIG}\n" for i in range(BIG_COUNT))
        host.path("/etc/heimdall/big.hosts").write_text(hosts)
        self.proc = None

    def start(self) -> None:
        self.proc = self.host.spawn(
            ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
             f"--listen-address={self.host.underlay_ip}", "--port=53", "--user=root", "--group=root",
             "--pid-file=", f"--address=/{FORWARDED[0]}/{FORWARDED[1]}", "--addn-hosts=/etc/heimdall/big.hosts"],
            log=self.logs / "upstream.dnsmasq.log")
        wait_until(lambda: "192.0.2.77" in self.host.run(["dig", "+short", "+time=1", "+tries=1",
                                                          f"@{self.host.underlay_ip}", FORWARDED[0]]).stdout,
                   10, "dnsmasq to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    logs = tmp_path_factory.mktemp("dns-logs")
    key = new_cluster_key()
    with Lab() as lab:
        upstream = Upstream(lab.add_host("upstream"), logs)
        upstream.start()
        settings = {"dns-upstream-address": f"{upstream.host.underlay_ip}:53"}
        nodes, peers = [], []
        try:
            n1 = LabNode(lab.add_host("node1"), key, logs, settings=settings).start().wait_member()
            nodes.append(n1)
            nodes.append(LabNode(lab.add_host("node2"), key, logs, join=n1, settings=settings).start().wait_member())
            for node in nodes:
                node.wait_serving()
            assert n1.hctl("peers", "authorize", PEER_ID).returncode == 0
            peer_host = lab.add_host("laptop")
            resolv_conf = peer_host.path("/etc/resolv.conf").read_bytes()
            peers.append(LabPeer(peer_host, PEER_ID, nodes, logs, settings={"dns-resolver": "resolv-conf"}).start())
            wait_until(lambda: peers[-1].reaches(nodes), 30, "the peer to reach both nodes")
            yield {"lab": lab, "nodes": nodes, "peers": peers, "upstream": upstream, "resolv_conf": resolv_conf}
        finally:
            for peer in peers:
                peer.stop()
            for node in nodes:
                node.stop()
            upstream.stop()


def debug(net) -> str:
    return "\n".join([*(n.logs() for n in net["nodes"]), *(p.logs() for p in net["peers"])])


def dig(host, server: str, name: str, qtype: str = "A", *options: str) -> tuple[str, list[tuple[str, str, str]], str]:
    """(status, [(owner, type, data)] of every answer and authority record, flags) of one query from ``host``."""
    out = host.run(["dig", f"@{server}", "+time=5", "+tries=1", "+noall", "+comments", "+answer", "+authority",
                    *options, name, qtype], check=False).stdout
    status = re.search(r"status: (\w+)", out)
    flags = re.search(r";; flags: ([\w ]+);", out)
    records = [(f[0], f[3], " ".join(f[4:])) for f in (line.split() for line in out.splitlines()
                                                       if not line.startswith(";")) if len(f) >= 5]
    return (status[1] if status else "no answer: " + out), records, flags[1] if flags else ""


def a_records(records) -> list[str]:
    return sorted(data for _, rtype, data in records if rtype == "A")


def dns_pid(node) -> int:
    pid = node.procs["heimdall-dns"].pid
    assert open(f"/proc/{pid}/comm").read().strip().startswith("heimdall-dns")
    return pid


def answers(node) -> bool:
    status, records, _ = dig(node.host, node.tunnel_address, node.name)
    return status == "NOERROR" and a_records(records) == [node.tunnel_address]


def test_every_name_resolves_from_the_peer_and_from_a_node(net):
    n1, n2 = net["nodes"]
    peer = net["peers"][0]
    expected = {n1.name: n1.tunnel_address, n2.name: n2.tunnel_address, peer.name: peer.address}
    for client in (peer.host, n1.host):
        for server in (n1.tunnel_address, n2.tunnel_address):
            for name, address in expected.items():
                for spelling in (name, f"{name}.heimdall", f"{name.upper()}.Heimdall."):
                    status, records, flags = dig(client, server, spelling)
                    assert (status, a_records(records)) == ("NOERROR", [address]), (client, server, spelling)
                    assert "aa" in flags.split()
                status, records, _ = dig(client, server, f"{name}.heimdall", "AAAA")
                assert status == "NOERROR" and [t for _, t, _ in records] == ["SOA"], records
                status, records, _ = dig(client, server, ".".join(reversed(address.split("."))) + ".in-addr.arpa",
                                         "PTR")
                assert (status, records[0][1:]) == ("NOERROR", ("PTR", f"{name}.heimdall.")), records
            status, records, _ = dig(client, server, "nobody.heimdall")
            assert status == "NXDOMAIN" and [t for _, t, _ in records] == ["SOA"], records


def test_other_names_are_forwarded_to_the_upstream(net):
    n1, n2 = net["nodes"]
    for client, server in ((net["peers"][0].host, n2.tunnel_address), (n1.host, n1.tunnel_address)):
        status, records, _ = dig(client, server, FORWARDED[0])
        assert (status, a_records(records)) == ("NOERROR", [FORWARDED[1]])
        status, records, _ = dig(client, server, FORWARDED[0], "A", "+bufsize=4096")  # EDNS0 passes through
        assert (status, a_records(records)) == ("NOERROR", [FORWARDED[1]])


def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp(net):
    n1 = net["nodes"][0]
    client = net["peers"][0].host
    status, records, flags = dig(client, n1.tunnel_address, BIG, "A", "+ignore", "+bufsize=1232")
    assert "tc" in flags.split(), flags
    status, records, _ = dig(client, n1.tunnel_address, BIG, "A", "+tcp")
    assert status == "NOERROR" and len(a_records(records)) == BIG_COUNT
    status, records, _ = dig(client, n1.tunnel_address, net["nodes"][1].name, "A", "+tcp")
    assert a_records(records) == [net["nodes"][1].tunnel_address]


ABUSE = r"""
import socket, struct, sys
server = sys.argv[1]
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(1)
def ask(packet):
    udp.sendto(packet, (server, 53))
    try:
        return udp.recv(65535)
    except socket.timeout:
        return None
header = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
results = {
    "runt": ask(b"\x12\x34\x01"),
    "truncated question": ask(header + b"\x06router"),
    "pointer loop": ask(header + b"\xc0\x0c\x00\x01\x00\x01"),
    "a response": ask(struct.pack("!HHHHHH", 0x1234, 0x8180, 1, 0, 0, 0) + b"\x00\x00\x01\x00\x01"),
    "garbage": ask(bytes(range(256)) * 4),
}
tcp = socket.create_connection((server, 53), timeout=2)
tcp.sendall(b"\x00\x20" + b"\xff" * 10)  # announces 32 bytes, sends 10, hangs up
tcp.close()
tcp = socket.create_connection((server, 53), timeout=2)
tcp.sendall(struct.pack("!H", 15) + header + b"\x06rou")
results["tcp truncated"] = tcp.recv(65535)[2:]
tcp.close()
for case, answer in results.items():
    print(case, "none" if answer is None else answer[3] & 0x0f)
"""


def test_malformed_and_truncated_queries_get_formerr_or_nothing(net):
    n1 = net["nodes"][0]
    out = net["peers"][0].host.run([sys.executable, "-c", ABUSE, n1.tunnel_address]).stdout
    results = dict(line.rsplit(" ", 1) for line in out.splitlines())
    assert results == {"runt": "none", "truncated question": "1", "pointer loop": "1", "a response": "none",
                       "garbage": "1", "tcp truncated": "1"}, out
    assert n1.procs["heimdall-dns"].poll() is None and answers(n1)


BURST = r"""
import random, socket, string, struct, sys
server, count = sys.argv[1], int(sys.argv[2])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.settimeout(2)
def query(i, name):
    wire = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\x00"
    return struct.pack("!HHHHHH", i & 0xffff, 0x0100, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01"
answered = 0
for start in range(0, count, 100):  # 100 in flight at a time
    for i in range(start, start + 100):
        label = "".join(random.choices(string.ascii_lowercase, k=12))
        udp.sendto(query(i, label + (".heimdall" if i % 2 else ".random.test")), (server, 53))
    for _ in range(100):
        try:
            udp.recv(65535)
            answered += 1
        except socket.timeout:
            break
print(answered)
"""


def rss_kib(pid: int) -> int:
    return int(re.search(r"VmRSS:\s+(\d+) kB", open(f"/proc/{pid}/status").read())[1])


def test_a_burst_of_random_names_leaves_memory_flat(net):
    """Half the names are ours (NXDOMAIN from memory), half are forwarded (the upstream refuses them)."""
    n1 = net["nodes"][0]
    client = net["peers"][0].host
    pid = dns_pid(n1)
    client.run([sys.executable, "-c", BURST, n1.tunnel_address, "2000"], timeout=60)  # warm up
    before = rss_kib(pid)
    answered = int(client.run([sys.executable, "-c", BURST, n1.tunnel_address, "10000"], timeout=120).stdout)
    after = rss_kib(pid)
    assert answered >= 9000, answered
    assert after - before < 8 * 1024, (before, after)
    assert answers(n1)


def test_ping_by_name_from_the_peer(net):
    peer = net["peers"][0]
    resolv_conf = peer.host.path("/etc/resolv.conf").read_text()
    assert "search heimdall" in resolv_conf and net["nodes"][0].tunnel_address in resolv_conf
    for name in ("node1", "node2.heimdall"):
        assert peer.host.run(["ping", "-c", "1", "-W", "2", name], check=False).returncode == 0, name


def test_a_renamed_peer_is_answered_by_every_node_and_the_stopped_peer_restores_resolv_conf(net):
    nodes, old = net["nodes"], net["peers"][0]
    address = old.address
    old.stop()
    assert old.host.path("/etc/resolv.conf").read_bytes() == net["resolv_conf"]
    renamed = LabPeer(old.host, PEER_ID, nodes, old.log_dir, settings={"name": "renamed", "dns-resolver": "resolv-conf"})
    net["peers"].append(renamed.start())

    def renamed_everywhere():
        for node in nodes:
            new = dig(node.host, node.tunnel_address, "renamed.heimdall")
            gone = dig(node.host, node.tunnel_address, f"{old.name}.heimdall")
            if a_records(new[1]) != [address] or gone[0] != "NXDOMAIN":
                return False
        return True

    wait_until(renamed_everywhere, 20, f"every node to answer the new name\n{debug(net)}")
    renamed.stop()
    assert old.host.path("/etc/resolv.conf").read_bytes() == net["resolv_conf"]


def test_a_node_can_resolve_the_names_too_and_undoes_it(net):
    n1, n2 = net["nodes"]
    before = n2.host.path("/etc/resolv.conf").read_bytes()
    n2.restart(("heimdall-dns",), {"dns-resolve-names": "true", "dns-resolver": "resolv-conf"})
    wait_until(lambda: n2.tunnel_address in n2.host.path("/etc/resolv.conf").read_text(), 20,
               f"heimdall-dns to install the names on node2\n{n2.logs()}")
    assert n2.host.run(["ping", "-c", "1", "-W", "2", n1.name], check=False).returncode == 0
    assert n2.signal_daemon("heimdall-dns") == 0
    assert n2.host.path("/etc/resolv.conf").read_bytes() == before
    n2.restart(("heimdall-dns",), {"dns-resolve-names": "false"})  # already stopped: just started again


def test_upstream_down_gives_servfail_quickly_and_local_names_still_answer(net):
    n1 = net["nodes"][0]
    net["upstream"].stop()
    started = time.monotonic()
    status, _, _ = dig(n1.host, n1.tunnel_address, FORWARDED[0])
    assert status == "SERVFAIL" and time.monotonic() - started < 4.5
    assert answers(n1)
