"""heimdall.firewall on real iptables (both backends), inside network namespaces made here.

Every iptables command runs in a namespace this file creates (``hdfw-<random>``) and
deletes afterwards, on failure too. Nothing touches the machine's own rules.

In the packet test, the router's "WireGuard interface" is a veth named ``darknet``. The
rules match interface names only, so a veth proves the same forwarding and NAT
behaviour without a tunnel.
"""
import os
import secrets
import shutil
import subprocess
import sys

import pytest

from heimdall.firewall import FORWARD, POSTROUTING, Firewall, FirewallError, FirewallSpec, desired_rules

pytestmark = pytest.mark.integration

BACKENDS = ("nft", "legacy")
SPEC = FirewallSpec(uplink="up0", tunnel_networks=("10.128.0.0/9", "10.51.0.0/16"))
FOREIGN = {  # rules other software has on the host; they must survive everything we do
    "filter": [["-A", "FORWARD", "-s", "192.0.2.0/24", "-j", "DROP"],
               ["-N", "OTHER-CHAIN"], ["-A", "OTHER-CHAIN", "-j", "RETURN"],
               ["-A", "FORWARD", "-j", "OTHER-CHAIN"]],
    "nat": [["-A", "POSTROUTING", "-s", "192.0.2.0/24", "-o", "up0", "-j", "SNAT", "--to-source", "198.51.100.9"]],
}

# Answers each UDP datagram with the source address it arrived from.
ECHO_SOURCE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
print("ready", flush=True)
while True:
    data, (host, port) = s.recvfrom(64)
    s.sendto(host.encode(), (host, port))
"""
# Sends one datagram and prints the answer, or TIMEOUT.
ASK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1.5)
s.sendto(b"?", (sys.argv[1], int(sys.argv[2])))
try:
    print(s.recvfrom(64)[0].decode())
except socket.timeout:
    print("TIMEOUT")
"""


@pytest.fixture(scope="module", autouse=True)
def prerequisites():
    if os.geteuid() != 0:
        pytest.fail("firewall integration tests need root (network namespaces, iptables)")
    tools = ["ip", "ping", "iptables"] + [f"iptables-{b}{s}" for b in BACKENDS for s in ("", "-save", "-restore")]
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"missing tools: {', '.join(missing)} (apt-get install iptables iproute2 iputils-ping)")


def sh(ns, *argv, stdin=None, check=True):
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], input=stdin, capture_output=True, text=True,
                          timeout=30)
    if check and proc.returncode != 0:
        pytest.fail(f"in {ns}: {' '.join(argv)} exited {proc.returncode}: {proc.stderr.strip()}")
    return proc.stdout


@pytest.fixture
def netns():
    """Makes fresh network namespaces (loopback up); deletes them all afterwards."""
    created = []

    def make():
        name = f"hdfw-{secrets.token_hex(4)}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        created.append(name)
        sh(name, "ip", "link", "set", "lo", "up")
        return name

    yield make
    failed = [name for name in created if subprocess.run(["ip", "netns", "delete", name]).returncode != 0]
    if failed:
        pytest.fail(f"could not delete network namespaces {failed}")


def save(ns, backend, table):
    """iptables-save of one table, minus its timestamped comment lines."""
    text = sh(ns, f"iptables-{backend}-save", "-t", table)
    return [line for line in text.splitlines() if not line.startswith("#")]


def our_rules(lines, chain):
    return tuple(line[len(f"-A {chain} "):] for line in lines if line.startswith(f"-A {chain} "))


def without_us(lines):
    return [line for line in lines if "HEIMDALL-" not in line]


def add_foreign_rules(ns, backend):
    for table, commands in FOREIGN.items():
        for command in commands:
            sh(ns, f"iptables-{backend}", "-w", "-t", table, *command)


def assert_exactly(ns, backend, spec):
    """Our chains hold spec's rules, and each has one jump, first in its built-in chain."""
    for hook, rules in desired_rules(spec).items():
        lines = save(ns, backend, hook.table)
        assert our_rules(lines, hook.chain) == rules
        builtin = [line for line in lines if line.startswith(f"-A {hook.builtin} ")]
        assert builtin[0] == f"-A {hook.builtin} -j {hook.chain}"
        assert builtin.count(f"-A {hook.builtin} -j {hook.chain}") == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_apply_puts_rules_in_our_chains_with_one_jump_each(netns, backend):
    ns = netns()
    add_foreign_rules(ns, backend)
    assert Firewall(backend, netns=ns).apply(SPEC) is True
    assert_exactly(ns, backend, SPEC)


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_apply_changes_nothing(netns, backend):
    ns = netns()
    firewall = Firewall(backend, netns=ns)
    firewall.apply(SPEC)
    before = {table: save(ns, backend, table) for table in ("filter", "nat")}
    handles = sh(ns, "nft", "-a", "list", "ruleset") if backend == "nft" else None
    assert firewall.apply(SPEC) is False
    assert Firewall(backend, netns=ns).apply(SPEC) is False  # a restarted daemon, too
    assert {table: save(ns, backend, table) for table in ("filter", "nat")} == before
    if handles is not None:  # nft rule handles prove nothing was deleted and re-added
        assert sh(ns, "nft", "-a", "list", "ruleset") == handles


@pytest.mark.parametrize("backend", BACKENDS)
def test_restart_after_a_crash_repairs_duplicate_and_displaced_jumps(netns, backend):
    ns = netns()
    Firewall(backend, netns=ns).apply(SPEC)
    iptables = f"iptables-{backend}"
    sh(ns, iptables, "-w", "-I", "FORWARD", "1", "-s", "198.51.100.0/24", "-j", "DROP")  # someone else on top
    sh(ns, iptables, "-w", "-A", "FORWARD", "-j", "HEIMDALL-FORWARD")  # a stray second jump
    sh(ns, iptables, "-w", "-t", "nat", "-A", "HEIMDALL-POSTROUTING", "-j", "RETURN")  # stale content
    assert Firewall(backend, netns=ns).apply(SPEC) is True
    assert_exactly(ns, backend, SPEC)
    assert "-A FORWARD -s 198.51.100.0/24 -j DROP" in save(ns, backend, "filter")


@pytest.mark.parametrize("backend", BACKENDS)
def test_spec_change_replaces_only_our_chain_contents(netns, backend):
    ns = netns()
    add_foreign_rules(ns, backend)
    firewall = Firewall(backend, netns=ns)
    firewall.apply(SPEC)
    foreign = {table: without_us(save(ns, backend, table)) for table in ("filter", "nat")}
    changed = FirewallSpec(uplink="up1", tunnel_networks=("10.51.0.0/16",), wg_interface="hd0")
    assert firewall.apply(changed) is True
    assert_exactly(ns, backend, changed)
    assert {table: without_us(save(ns, backend, table)) for table in ("filter", "nat")} == foreign


@pytest.mark.parametrize("backend", BACKENDS)
def test_remove_leaves_every_other_rule_as_it_was(netns, backend):
    ns = netns()
    add_foreign_rules(ns, backend)
    pristine = {table: save(ns, backend, table) for table in ("filter", "nat")}
    firewall = Firewall(backend, netns=ns)
    firewall.apply(SPEC)
    assert firewall.remove() is True
    assert {table: save(ns, backend, table) for table in ("filter", "nat")} == pristine
    assert firewall.remove() is False


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_second_table_rolls_back_the_first(netns, backend):
    ns = netns()
    firewall = Firewall(backend, netns=ns)
    firewall.apply(SPEC)
    # A foreign rule that jumps to our nat chain makes deleting that chain fail for real,
    # after the filter table has already been written.
    sh(ns, f"iptables-{backend}", "-w", "-t", "nat", "-A", "POSTROUTING", "-o", "lo", "-j", "HEIMDALL-POSTROUTING")
    before = {table: save(ns, backend, table) for table in ("filter", "nat")}
    with pytest.raises(FirewallError) as failure:
        firewall.remove()
    where = (failure.value.step, failure.value.table, failure.value.chain)
    assert where == ("remove", "nat", "HEIMDALL-POSTROUTING")
    assert "[line 4: -X HEIMDALL-POSTROUTING]" in str(failure.value)
    assert {table: save(ns, backend, table) for table in ("filter", "nat")} == before


def test_detected_backend_is_the_one_the_hosts_iptables_shows(netns):
    ns = netns()
    firewall = Firewall(netns=ns)
    assert firewall.backend in BACKENDS
    firewall.apply(SPEC)
    assert sh(ns, "iptables", "-w", "-S", "FORWARD").splitlines()[1] == "-A FORWARD -j HEIMDALL-FORWARD"
    assert sh(ns, "iptables", "-w", "-t", "nat", "-S", "HEIMDALL-POSTROUTING").splitlines()[1:] == [
        f"-A HEIMDALL-POSTROUTING {rule}" for rule in desired_rules(SPEC)[POSTROUTING]]
    other = "legacy" if firewall.backend == "nft" else "nft"
    assert "HEIMDALL" not in sh(ns, f"iptables-{other}-save")


def test_without_backend_named_tools_the_plain_ones_of_the_detected_backend_serve(netns, monkeypatch, tmp_path):
    for tool in ("ip", "iptables", "iptables-save", "iptables-restore"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(tmp_path))
    ns = netns()
    firewall = Firewall(netns=ns)
    firewall.apply(SPEC)
    assert sh(ns, "iptables", "-w", "-S", "HEIMDALL-FORWARD").splitlines()[1:] == [
        f"-A HEIMDALL-FORWARD {rule}" for rule in desired_rules(SPEC)[FORWARD]]


def test_forwarding_is_switched_on_per_namespace(netns):
    ns = netns()
    enable = [sys.executable, "-c", "from heimdall.firewall import enable_ip_forwarding as e; print(e())"]
    assert sh(ns, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"
    assert sh(ns, *enable).strip() == "True"
    assert sh(ns, "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "1"
    assert sh(ns, *enable).strip() == "False"
    assert sh(netns(), "cat", "/proc/sys/net/ipv4/ip_forward").strip() == "0"


@pytest.fixture
def echo_servers():
    """Starts UDP source-echo servers in namespaces; kills exactly those processes afterwards."""
    started = []

    def start(ns, address, port):
        proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO_SOURCE, address, str(port)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        started.append(proc)
        if proc.stdout.readline().strip() != "ready":
            pytest.fail(f"echo server in {ns} did not start: {proc.stderr.read()}")

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=10)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tunnel_traffic_is_forwarded_and_masqueraded_out_of_the_uplink(netns, echo_servers, backend):
    """A router joins A (tunnel side, 10.51.0.2 on "darknet"), B (uplink side, 198.51.100.2
    on "up0") and C (a service behind the node, 10.128.3.2 on "lan0").

    The router's FORWARD policy is DROP, so only our rules can let anything through.
    B has no route back to 10.51.0.0/16, so a reply only arrives if the router masqueraded.
    """
    a, router, b, c = netns(), netns(), netns(), netns()
    links = (  # host, its address, router's interface, router's address
        (a, "10.51.0.2/24", "darknet", "10.51.0.1/24"),
        (b, "198.51.100.2/24", "up0", "198.51.100.1/24"),
        (c, "10.128.3.2/24", "lan0", "10.128.3.1/24"),
    )
    for host, address, router_dev, router_address in links:
        sh(router, "ip", "link", "add", router_dev, "type", "veth", "peer", "name", "eth0", "netns", host)
        sh(router, "ip", "addr", "add", router_address, "dev", router_dev)
        sh(router, "ip", "link", "set", router_dev, "up")
        sh(host, "ip", "addr", "add", address, "dev", "eth0")
        sh(host, "ip", "link", "set", "eth0", "up")
    for host, gateway in ((a, "10.51.0.1"), (c, "10.128.3.1")):
        sh(host, "ip", "route", "add", "default", "via", gateway)
    sh(router, sys.executable, "-c", "from heimdall.firewall import enable_ip_forwarding; enable_ip_forwarding()")
    sh(router, f"iptables-{backend}", "-w", "-P", "FORWARD", "DROP")
    echo_servers(b, "198.51.100.2", 7000)

    def ask(ns, address):
        return sh(ns, sys.executable, "-c", ASK, address, "7000").strip()

    assert ask(a, "198.51.100.2") == "TIMEOUT"  # policy DROP, no rules of ours yet

    firewall = Firewall(backend, netns=router)
    firewall.apply(SPEC)
    assert ask(a, "198.51.100.2") == "198.51.100.1"  # B saw the router's address; the reply came back
    sh(a, "ping", "-c", "1", "-W", "2", "198.51.100.2")

    # Tunnel networks may open connections into the tunnel (not masqueraded: not the uplink);
    # the uplink side may not, even with a route to it.
    echo_servers(a, "10.51.0.2", 7000)
    assert ask(c, "10.51.0.2") == "10.128.3.2"
    sh(b, "ip", "route", "add", "10.51.0.0/16", "via", "198.51.100.1")
    assert ask(b, "10.51.0.2") == "TIMEOUT"

    firewall.remove()
    assert ask(a, "198.51.100.2") == "TIMEOUT"
