"""The Ansible role on real systemd hosts: ansible/site.yml over two gateways and a peer.

Three bare Debian containers (the image without our package; its dependencies as wheels,
since the containers reach no index) are driven by ansible-playbook through the nsenter
connection (tests/e2e/ansible_plugins). The tests run in file order on the same hosts:
the first run forms the network, the second changes nothing, a changed setting restarts
only its daemon, a killed heimdall-wg comes back, a lasting loss of the local Redis is an error
in the journal and heals, gw2 is removed with heimdall_state=absent, then the peer.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from heimdall.lab.cluster import new_cluster_key, wait_until
from tests.e2e import containers
from tests.e2e.containers import Container

pytestmark = pytest.mark.e2e

REPO = containers.REPO
NODE_UNITS = ("heimdall-store.service", "heimdall-wg.service", "heimdall-dns.service", "heimdall-elector.service",
              "heimdall-api.service")
GATEWAYS = ("gw1", "gw2")
PEER = "laptop"
RECAP = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.MULTILINE)


class Play:
    """The inventory (JSON, which is YAML) and ansible-playbook runs of ansible/site.yml."""

    def __init__(self, hosts: dict[str, Container], workdir: Path, figures: dict[str, str]) -> None:
        self.hosts = hosts
        self.workdir = workdir
        self.figures = figures
        self.cluster_key = new_cluster_key()
        self.gateway_vars: dict[str, dict] = {name: {} for name in GATEWAYS}
        self.peer_vars: dict[str, object] = {}
        self.settings: dict[str, object] = {}
        self.runs = 0

    def inventory(self) -> dict:
        def host(name: str, **extra) -> dict:
            box = self.hosts[name]
            return {"ansible_connection": "nsenter", "ansible_nsenter_pid": box.leader,
                    "heimdall_address": box.address, **extra}

        return {
            "heimdall_gateways": {
                "hosts": {name: host(name, **self.gateway_vars[name]) for name in GATEWAYS},
                "vars": {"heimdall_cluster_key": self.cluster_key, "heimdall_settings": self.settings}},
            "heimdall_peers": {"hosts": {PEER: host(PEER, **self.peer_vars)}},
            "all": {"vars": {"ansible_python_interpreter": "/usr/bin/python3",
                             "heimdall_pip_extra_args": f"--no-index --find-links {containers.WHEELHOUSE}",
                             "heimdall_wheel_build_dir": str(self.workdir / "wheel")}}}

    def run(self, what: str) -> dict[str, dict[str, int]]:
        """Run the playbook; the recap per host ({"gw1": {"ok": .., "changed": .., ...}})."""
        self.runs += 1
        inventory = self.workdir / f"inventory-{self.runs}.yml"
        inventory.write_text(json.dumps(self.inventory(), indent=2))
        bin_dir = Path(sys.executable).parent
        env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "ANSIBLE_ROLES_PATH": str(REPO / "ansible/roles"),
               "ANSIBLE_CONNECTION_PLUGINS": str(REPO / "tests/e2e/ansible_plugins/connection"),
               "ANSIBLE_PIPELINING": "1", "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0",
               "ANSIBLE_LOCAL_TEMP": str(self.workdir / "tmp"), "ANSIBLE_HOME": str(self.workdir / "home"),
               "ANSIBLE_DEPRECATION_WARNINGS": "0"}
        started = time.monotonic()
        result = subprocess.run([str(bin_dir / "ansible-playbook"), "-v", "-i", str(inventory),
                                 str(REPO / "ansible/site.yml")], capture_output=True, text=True, env=env,
                                timeout=480, check=False)
        self.figures[f"ansible-playbook: {what}"] = f"{time.monotonic() - started:.1f} s"
        (self.workdir / f"run-{self.runs}.log").write_text(result.stdout + result.stderr)
        assert result.returncode == 0, f"ansible-playbook exited {result.returncode}:\n{result.stdout[-6000:]}" \
                                       f"\n{result.stderr[-2000:]}"
        assert self.cluster_key not in result.stdout + result.stderr, "the cluster key appeared in the output"
        recap = {m[1]: {"ok": int(m[2]), "changed": int(m[3]), "unreachable": int(m[4]), "failed": int(m[5])}
                 for m in RECAP.finditer(result.stdout)}
        assert set(recap) == {*GATEWAYS, PEER}, result.stdout[-3000:]
        return recap


def pings(box: Container, address: str) -> bool:
    return box.run("ping", "-n", "-c", "1", "-W", "1", address, check=False).returncode == 0


def tunnel_addresses(gw: Container) -> dict[str, str]:
    return {n["name"]: n["tunnel_address"] for n in json.loads(gw.run("hctl", "nodes", "list", "--json").stdout)}


def main_pids(box: Container, units) -> dict[str, str]:
    return {unit: box.show(unit, "MainPID")["MainPID"] for unit in units}


def ifindex(box: Container) -> str:
    return box.run("cat", "/sys/class/net/darknet/ifindex").stdout.strip()


@pytest.fixture(scope="module")
def fleet(bare_image, tmp_path_factory):
    with containers.Fleet(bare_image, tmp_path_factory.mktemp("e2e-consoles")) as fleet:
        yield fleet


@pytest.fixture(scope="module")
def hosts(fleet, figures) -> dict[str, Container]:
    started = time.monotonic()
    booted = {name: fleet.boot(name, {}) for name in (*GATEWAYS, PEER)}
    figures["ansible: boot 3 bare containers"] = f"{time.monotonic() - started:.1f} s"
    return booted


@pytest.fixture(scope="module")
def play(hosts, tmp_path_factory, figures) -> Play:
    return Play(hosts, tmp_path_factory.mktemp("ansible"), figures)


def test_playbook_forms_the_network_and_the_peer_reaches_the_gateways_by_name(play, hosts):
    recap = play.run("first run (install, bootstrap, join, admit the peer)")
    assert all(r["failed"] == 0 and r["changed"] > 0 for r in recap.values()), recap
    gw1, gw2, laptop = hosts["gw1"], hosts["gw2"], hosts[PEER]
    for gw in (gw1, gw2):
        for unit in NODE_UNITS:
            assert gw.show(unit, "ActiveState")["ActiveState"] == "active", (gw.name, unit)
        assert gw.run("readlink", "/usr/local/bin/heimdall-wg").stdout.strip() == "/opt/heimdall/bin/heimdall-wg"
        assert gw.run("stat", "-c", "%a", "/etc/heimdall/cluster.key").stdout.strip() == "600"
        # the package lives in its own virtualenv, not in the system's python
        assert gw.run("python3", "-c", "import heimdall", check=False).returncode != 0
    assert laptop.show("heimdall-peer.service", "ActiveState")["ActiveState"] == "active"
    tunnels = tunnel_addresses(gw1)
    assert sorted(tunnels) == ["gw1", "gw2"], tunnels
    authorized = json.loads(gw1.run("hctl", "peers", "authorized", "--json").stdout)
    assert [p["peer_id"] for p in authorized] == [PEER], authorized
    wait_until(lambda: all(pings(laptop, a) for a in tunnels.values()), 30, "the peer to ping both gateways")
    wait_until(lambda: pings(laptop, "gw1") and pings(laptop, "gw2.heimdall"), 30, "the peer to ping them by name")


def test_second_run_changes_nothing(play):
    recap = play.run("second run (nothing to do)")
    assert {name: r["changed"] for name, r in recap.items()} == {name: 0 for name in recap}, recap


def test_changed_setting_restarts_only_the_daemon_that_reads_it_and_no_tunnel(play, hosts):
    before = {name: main_pids(hosts[name], NODE_UNITS) for name in GATEWAYS}
    peer_before = main_pids(hosts[PEER], ["heimdall-peer.service"])
    links = {name: ifindex(box) for name, box in hosts.items()}
    play.settings["dns-ttl"] = 7  # read by heimdall-dns only
    recap = play.run("dns-ttl changed")
    assert recap[PEER]["changed"] == 0 and all(recap[name]["changed"] > 0 for name in GATEWAYS), recap
    for name in GATEWAYS:
        after = main_pids(hosts[name], NODE_UNITS)
        changed = {unit for unit in NODE_UNITS if after[unit] != before[name][unit]}
        assert changed == {"heimdall-dns.service"}, (name, before[name], after)
        assert hosts[name].show("heimdall-dns.service", "ActiveState")["ActiveState"] == "active"
        assert "dns-ttl = 7" in hosts[name].run("cat", "/etc/heimdall/heimdall.conf").stdout
    assert main_pids(hosts[PEER], ["heimdall-peer.service"]) == peer_before
    assert {name: ifindex(box) for name, box in hosts.items()} == links, "a tunnel interface was recreated"


def test_killed_wg_is_restarted_by_systemd_and_the_peer_keeps_reaching_the_gateway(hosts):
    gw1, laptop = hosts["gw1"], hosts[PEER]
    t1 = tunnel_addresses(gw1)["gw1"]
    for name in GATEWAYS:
        assert hosts[name].journal("--unit=heimdall-wg.service", "--priority=err") == "", name
    before = gw1.show("heimdall-wg.service", "MainPID", "NRestarts")
    gw1.systemctl("kill", "-s", "KILL", "heimdall-wg.service")

    def restarted():
        state = gw1.show("heimdall-wg.service", "MainPID", "NRestarts", "ActiveState")
        return state["ActiveState"] == "active" and state["MainPID"] != before["MainPID"] and state

    after = wait_until(restarted, 15, "heimdall-wg to be restarted")
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, after
    assert pings(laptop, t1)
    assert gw1.journal("--unit=heimdall-wg.service", "--priority=err", "--identifier=heimdall-wg") == ""


def test_lost_redis_is_an_error_in_the_journal_and_wg_recovers_when_it_is_back(hosts, figures):
    """Fault: gw2's heimdall-store (its Redis) stopped. `journalctl -u heimdall-wg -p err` is empty
    before, has the error once the loss lasts (heimdall/state/feed.py: UNREACHABLE_ERROR_AFTER), and
    the same heimdall-wg process follows Redis again when the store is back; the tunnel forwards
    throughout (gw2 is a replica: the master, gw1, is untouched)."""
    gw2, laptop = hosts["gw2"], hosts[PEER]
    t2 = tunnel_addresses(gw2)["gw2"]
    assert gw2.journal("--unit=heimdall-wg.service", "--priority=err") == ""
    before = gw2.show("heimdall-wg.service", "MainPID", "NRestarts")
    since = gw2.run("date", "+@%s.%N").stdout.strip()

    def journal(priority: str) -> str:
        return gw2.journal("--unit=heimdall-wg.service", f"--since={since}", f"--priority={priority}", "--output=cat")

    started = time.monotonic()
    gw2.systemctl("stop", "heimdall-store.service")
    try:
        wait_until(lambda: "the local Redis has been unreachable" in journal("err"), 25,
                   "heimdall-wg to log the lasting loss of Redis as an error")
        figures["ansible: Redis stopped on gw2 until heimdall-wg -p err has the error"] = \
            f"{time.monotonic() - started:.1f} s"
        assert "lost the local Redis" in journal("warning")
        assert pings(laptop, t2), "the tunnel stopped forwarding while Redis was down"
    finally:
        gw2.systemctl("start", "heimdall-store.service")
    wait_until(lambda: "the local Redis is back" in journal("info"), 20, "heimdall-wg to follow Redis again")
    assert gw2.show("heimdall-wg.service", "MainPID", "NRestarts", "ActiveState") == {**before, "ActiveState": "active"}
    assert journal("err").count("\n") == 1, journal("err")  # one error for one outage
    assert pings(laptop, t2)


def test_absent_gateway_leaves_the_network_and_keeps_nothing(play, hosts):
    gw1, gw2, laptop = hosts["gw1"], hosts["gw2"], hosts[PEER]
    t2 = tunnel_addresses(gw1)["gw2"]
    play.gateway_vars["gw2"]["heimdall_state"] = "absent"
    recap = play.run("gw2 absent")
    assert recap["gw2"]["changed"] > 0, recap
    assert sorted(tunnel_addresses(gw1)) == ["gw1"]
    wait_until(lambda: not pings(laptop, t2), 15, "gw2's tunnel address to be gone from the peer")
    assert pings(laptop, tunnel_addresses(gw1)["gw1"]) and pings(laptop, "gw1")
    for path in ("/etc/heimdall", "/var/lib/heimdall", "/opt/heimdall", "/usr/local/bin/heimdall-wg",
                 "/etc/systemd/system/heimdall.target", "/etc/systemd/system/heimdall-wg.service",
                 "/etc/sysctl.d/60-heimdall.conf", "/sys/class/net/darknet"):
        assert gw2.run("test", "-e", path, check=False).returncode == 1, path
    assert gw2.systemctl("list-units", "--no-legend", "--all", "heimdall*").stdout.strip() == ""
    # Its second run (changed=0 there too) is the next test's last run, with the peer absent as well.


def test_absent_peer_is_deauthorized_and_keeps_nothing(play, hosts):
    gw1, laptop = hosts["gw1"], hosts[PEER]
    play.peer_vars["heimdall_state"] = "absent"
    recap = play.run("laptop absent")
    assert recap[PEER]["changed"] > 0, recap
    assert json.loads(gw1.run("hctl", "peers", "authorized", "--json").stdout) == []
    wait_until(lambda: re.match(r"rev \d+: 0 WireGuard peers", gw1.show("heimdall-wg.service", "StatusText")
                                ["StatusText"]), 15, "gw1 to drop the peer's tunnel")
    for path in ("/etc/heimdall", "/var/lib/heimdall", "/opt/heimdall", "/usr/local/bin/heimdall-peer",
                 "/usr/local/bin/hctl", "/etc/systemd/system/heimdall-peer.service", "/etc/sysctl.d/60-heimdall.conf",
                 "/sys/class/net/darknet"):
        assert laptop.run("test", "-e", path, check=False).returncode == 1, path
    assert laptop.systemctl("list-units", "--no-legend", "--all", "heimdall*").stdout.strip() == ""
    assert laptop.run("pidof", "wireguard-go", check=False).stdout.strip() == ""
    again = play.run("gw2 and laptop absent, again")
    assert {name: r["changed"] for name, r in again.items()} == {name: 0 for name in again}, again
