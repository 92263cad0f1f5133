"""The userspace backend (wireguard-go over UAPI) between simulated hosts."""
import json
import time

import pytest

from heimdall.lab.tunnels import LIVE_FLOW_SECONDS, PingFlow, TunnelHost, assert_no_loss, live_peer_change

pytestmark = pytest.mark.integration


def mesh(lab, *names: str) -> list[TunnelHost]:
    hosts = [TunnelHost(lab.add_host(name), "userspace") for name in names]
    for host in hosts:
        host.up()
    for host in hosts:
        host.set_peers([other for other in hosts if other is not host])
    return hosts


def test_tunnel_carries_traffic_and_reports_handshake_and_counters(lab):
    a, b = mesh(lab, "alpha", "beta")
    assert "3 received" in a.ping(b)
    assert "dev darknet" in a.host.run(["ip", "route", "get", b.tunnel_ip]).stdout
    status = a.show()["peers"][b.public_key]
    assert status["peer"]["endpoint"] == f"{b.host.underlay_ip}:10100"
    assert time.time() - status["last_handshake"] < 60
    assert status["rx_bytes"] > 0 and status["tx_bytes"] > 0


def test_a_peer_is_added_and_removed_live_without_loss_or_a_new_interface(lab, tmp_path):
    a, b = mesh(lab, "alpha", "beta")
    c = TunnelHost(lab.add_host("gamma"), "userspace")

    change = live_peer_change(a, b, c, tmp_path / "ping.log")

    print(f"\nlive peer add: {change.add_seconds * 1000:.2f} ms, remove: {change.remove_seconds * 1000:.2f} ms "
          f"(one apply_peers call each); flow {change.received}/{change.sent} echoes answered")
    assert change.covered, "the ping flow ended before the change did: it proves nothing, lengthen it"
    assert change.sent >= 50 and change.lost == 0
    assert len(change.ifindexes) == 1, f"interface recreated: ifindexes {sorted(change.ifindexes)}"
    assert set(a.show()["peers"]) == {b.public_key}
    assert c.host.run(["ping", "-c", "1", "-W", "1", a.tunnel_ip], check=False).returncode != 0


def test_killing_the_owning_process_keeps_the_tunnel_and_a_new_backend_adopts_it(lab, tmp_path):
    a = TunnelHost(lab.add_host("alpha"), "userspace")
    b = TunnelHost(lab.add_host("beta"), "userspace")
    owner = a.host.spawn(a.up_command("--hold"), log=tmp_path / "owner.log")  # starts wireguard-go
    created = wait_for_json_line(tmp_path / "owner.log", owner)
    b.up()
    a.set_peers([b])
    b.set_peers([a])
    a.ping(b)
    flow = PingFlow(a.host, b.tunnel_ip, LIVE_FLOW_SECONDS, tmp_path / "ping.log").wait_answered()

    owner.kill()
    assert owner.wait() == -9
    adopted = a.up()

    assert_no_loss([flow], "wireguard-go's owner was killed and the interface re-adopted")
    assert adopted["ifindex"] == created["ifindex"]
    assert set(a.show()["peers"]) == {b.public_key}


def wait_for_json_line(log, proc, timeout=15.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if text.endswith("\n"):
            return json.loads(text.splitlines()[0])
        assert proc.poll() is None, f"exited {proc.returncode}: {text}"
        time.sleep(0.05)
    raise AssertionError(f"no answer within {timeout}s from {proc.args}")


def test_an_invalid_peer_key_is_refused_whole_and_changes_nothing(lab):
    a, b = mesh(lab, "alpha", "beta")
    newcomer = TunnelHost(lab.add_host("gamma"), "userspace")
    before = a.show()
    peers = [b.as_peer(), newcomer.as_peer(), {"public_key": "not-a-key", "allowed_ips": ["10.9.0.0/16"]}]

    result = a.wgctl("peers", input=json.dumps(peers), check=False)

    assert result.returncode == 1
    assert result.stderr.startswith("error: darknet: applying peers +2 ~0 -0: peer 'not-a-key': public key: "
                                    "not a WireGuard key: invalid base64 (nothing was changed)"), result.stderr
    after = a.show()
    assert after["ifindex"] == before["ifindex"]
    assert {k: s["peer"] for k, s in after["peers"].items()} == {k: s["peer"] for k, s in before["peers"].items()}
    assert "10.9.0.0" not in a.host.run(["ip", "route"]).stdout
    a.ping(b)


def test_an_interface_of_that_name_not_run_by_wireguard_go_is_not_adopted(lab):
    a = TunnelHost(lab.add_host("alpha"), "userspace")
    a.host.run(["ip", "tuntap", "add", "dev", "darknet", "mode", "tun"])  # e.g. left by another VPN

    result = a.wgctl("show", check=False)
    assert result.returncode == 1 and "darknet: reading the device: UAPI socket" in result.stderr
    result = a.host.run(a.up_command(), check=False)
    assert result.returncode == 1
    assert "darknet: an interface of this name exists but no wireguard-go answers" in result.stderr


def test_deleting_the_interface_stops_wireguard_go_and_is_idempotent(lab):
    a = TunnelHost(lab.add_host("alpha"), "userspace")
    a.up()
    assert a.host.path("/run/wireguard/darknet.sock").exists()

    for _ in range(2):
        assert json.loads(a.wgctl("down").stdout) == {"ifindex": None}

    assert not a.host.path("/run/wireguard/darknet.sock").exists()
    assert a.host.pids() == []
