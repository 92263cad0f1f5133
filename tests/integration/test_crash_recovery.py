"""kill -9 of each node daemon, on the master and on a replica: it comes back, leaves nothing behind,
and the tunnels never notice.

A two-node cluster (node1 bootstraps and is master, node2 joins and replicates
it) serves the module. Each case SIGKILLs one daemon on one node while node1
pings node2 over the tunnel, starts it again as systemd would, and checks that
the daemon recovers, that the children of the killed daemon died with it and
the host runs the same programs as before (no orphan, such as a redis-server
outliving its heimdall-store and holding its port), that no echo was lost and
that neither WireGuard interface was recreated.
"""
import os
import re
import signal
from collections import Counter

import pytest

from heimdall.lab import Lab
from heimdall.lab.cluster import NODE_DAEMONS, LabNode, NodeError, new_cluster_key, wait_until
from heimdall.lab.tunnels import PingFlow, assert_no_loss

pytestmark = pytest.mark.integration

REDIS_CONF = "/var/lib/heimdall/redis/redis.conf"  # inside each host: its own private /var/lib/heimdall
DEADLINE = 30


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    logs = tmp_path_factory.mktemp("crash-logs")
    key = new_cluster_key()
    with Lab() as lab:
        started = []
        try:
            started.append(LabNode(lab.add_host("node1"), key, logs).start().wait_member())
            started.append(LabNode(lab.add_host("node2"), key, logs, join=started[0]).start().wait_member())
            n1, n2 = started
            wait_until(lambda: n1.pings(n2.tunnel_address) and replicating(n2, n1), DEADLINE,
                       f"node2 to reach node1 and replicate it\n{n1.logs()}\n{n2.logs()}")
            yield started
        finally:
            for node in started:
                node.stop()


def replicating(replica: LabNode, master: LabNode) -> bool:
    info = replica.replication()
    return (info.get("role") == "slave" and info.get("master_host") == master.tunnel_address
            and info.get("master_link_status") == "up")


def cmdline(pid: int) -> str:
    """The command line of a running process; "" for one gone (or a zombie)."""
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def programs(node: LabNode) -> Counter:
    """The command lines of the processes running on the node's host (each daemon, redis-server,
    wireguard-go, a ping flow), counted: what a restart must give back, no more, no less."""
    return Counter(filter(None, map(cmdline, node.host.pids())))


def children(node: LabNode, daemon: str) -> dict[int, str]:
    """The running processes ``daemon`` started on the node's host (its redis-server, a sentinel): {pid: cmdline}."""
    found = {}
    for pid in node.host.pids():
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            continue
        if f"\nPPid:\t{node.procs[daemon].pid}\n" in status and cmdline(pid):
            found[pid] = cmdline(pid)
    return found


def redis_servers(node: LabNode) -> list[int]:
    """The PIDs of the redis-server processes running from the node's own config."""
    pids = []
    for pid in node.host.pids():
        argv = cmdline(pid).split()
        if argv and os.path.basename(argv[0]) == "redis-server" and REDIS_CONF in argv:
            pids.append(pid)
    return pids


def redis_pid(node: LabNode) -> int:
    return int(re.search(r"process_id:(\d+)", node.redis("INFO", "server"))[1])


def errors_since(node: LabNode, daemon: str, offset: int) -> list[str]:
    return [line for line in node.log(daemon)[offset:].splitlines() if " ERROR " in line or "Traceback" in line]


def recovered(daemon: str, node: LabNode, master: LabNode, replica: LabNode, before: dict) -> bool:
    """True once ``daemon``, just started again on ``node``, does its job again."""
    node._alive()  # raises, with the logs, if any daemon of the node has exited
    if node.log(daemon)[before["log"]:].count(f"{daemon}: started") < 1:
        return False
    if daemon == "heimdall-store":  # one redis-server of its config, a new one, and replication whole again
        return (redis_servers(node) == [redis_pid(node)] != [before["redis"]]
                and master.replication().get("role") == "master" and replicating(replica, master))
    if daemon == "heimdall-api":
        return node.hctl("status").returncode == 0
    if daemon == "heimdall-wg":
        return master.pings(replica.tunnel_address) and replica.pings(master.tunnel_address)
    return node.redis("HGET", "heimdall:master", "node_id").strip() == master.node_id  # the elector


@pytest.mark.parametrize("role", ["master", "replica"])
@pytest.mark.parametrize("daemon", NODE_DAEMONS)
def test_a_killed_daemon_recovers_and_leaves_nothing_behind(nodes, daemon, role):
    master, replica = nodes
    node = master if role == "master" else replica
    wait_until(lambda: recovered(daemon, node, master, replica, {"log": 0, "redis": None}), DEADLINE,
               f"the cluster to be whole before the kill\n{node.logs()}")
    ifindexes = [n.ifindex() for n in nodes]
    flow = PingFlow(master.host, replica.tunnel_address, 300, node.log_dir / f"flow-{daemon}-{role}.log")
    wait_until(lambda: flow.reply_times(), DEADLINE, "the ping flow to be answered")
    running = programs(node)
    before = {"log": len(node.log(daemon)), "redis": redis_pid(node)}
    orphans = children(node, daemon)

    node.signal_daemon(daemon, signal.SIGKILL)
    node.start_daemon(daemon)
    try:
        wait_until(lambda: recovered(daemon, node, master, replica, before), DEADLINE,
                   f"{daemon} on the {role} to recover from kill -9")
        wait_until(lambda: all(cmdline(pid) != cmd for pid, cmd in orphans.items()), DEADLINE,
                   f"the children of the killed {daemon} to die with it: {orphans}")
        wait_until(lambda: programs(node) == running, DEADLINE, "the host to run the same programs as before")
    except NodeError as exc:
        pytest.fail(f"{exc}\nbefore: {sorted(running)}\nnow: {sorted(programs(node))}\n"
                    f"{master.logs()}\n{replica.logs()}")
    assert errors_since(node, daemon, before["log"]) == [], node.log(daemon)

    assert_no_loss([flow], f"{daemon} on the {role} was killed (-9) and recovered", answers_after=10, timeout=DEADLINE)
    assert [n.ifindex() for n in nodes] == ifindexes, "a WireGuard interface was recreated"
