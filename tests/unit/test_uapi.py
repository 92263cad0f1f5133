"""The wireguard-go UAPI text: requests we send and answers we parse."""
import base64

import pytest

from heimdall.wg import keys
from heimdall.wg.model import PeerPlan, WgPeer
from heimdall.wg.userspace import (
    format_device_set,
    format_endpoint,
    format_peers_set,
    key_base64,
    key_hex,
    parse_device,
    response_errno,
)

PRIVATE = keys.generate_private_key()
K1, K2, K3 = (keys.public_key(keys.generate_private_key()) for _ in range(3))


def test_keys_travel_as_hex_and_come_back_unchanged():
    assert key_hex(K1) == base64.b64decode(K1).hex()
    assert key_base64(key_hex(K1)) == K1


def test_a_plan_is_one_request_with_removals_first_and_allowed_ips_replaced():
    plan = PeerPlan(
        add=(WgPeer(K1, ("10.1.0.0/16",), "192.0.2.1:10100", 25),),
        update=(WgPeer(K2, ("10.2.0.0/16", "10.200.0.0/24")),),
        remove=(K3,),
    )
    assert format_peers_set(plan).split("\n") == [
        "set=1",
        f"public_key={key_hex(K3)}",
        "remove=true",
        f"public_key={key_hex(K1)}",
        "replace_allowed_ips=true",
        "endpoint=192.0.2.1:10100",
        "persistent_keepalive_interval=25",
        "allowed_ip=10.1.0.0/16",
        f"public_key={key_hex(K2)}",  # no endpoint line: a roamed endpoint is kept
        "replace_allowed_ips=true",
        "persistent_keepalive_interval=0",
        "allowed_ip=10.2.0.0/16",
        "allowed_ip=10.200.0.0/24",
        "",
        "",
    ]


def test_a_peer_without_allowed_ips_gets_them_all_removed():
    assert format_peers_set(PeerPlan(update=(WgPeer(K1),))).endswith(
        "replace_allowed_ips=true\npersistent_keepalive_interval=0\n\n"
    )


@pytest.mark.parametrize(
    "peer, message",
    [
        (WgPeer("not-a-key"), "public key: not a WireGuard key"),
        (WgPeer(base64.b64encode(b"x" * 31).decode()), "31 bytes"),
        (WgPeer(K1, endpoint="gw.example.net:10100"), "is not an IP address"),
        (WgPeer(K1, endpoint="192.0.2.1"), "is not ip:port"),
        (WgPeer(K1, endpoint="192.0.2.1:70000"), "port 70000 is not 1-65535"),
        (WgPeer(K1, endpoint="192.0.2.1:0"), "port 0 is not 1-65535"),
        (WgPeer(K1, persistent_keepalive=-1), "persistent keepalive"),
    ],
)
def test_invalid_peers_are_refused_before_anything_is_sent(peer, message):
    with pytest.raises(ValueError, match=message):
        format_peers_set(PeerPlan(add=(WgPeer(K2), peer)))


def test_invalid_key_to_remove_is_refused():
    with pytest.raises(ValueError, match="peer to remove 'nope'"):
        format_peers_set(PeerPlan(remove=("nope",)))


@pytest.mark.parametrize(
    "endpoint, text",
    [("192.0.2.1:1", "192.0.2.1:1"), ("[2001:db8::1]:10100", "[2001:db8::1]:10100")],
)
def test_endpoints_are_ip_literals_with_ports(endpoint, text):
    assert format_endpoint(endpoint) == text


def test_ipv6_endpoints_need_brackets():
    with pytest.raises(ValueError, match=r"\[address\]:port"):
        format_endpoint("2001:db8::1:10100")


def test_device_request_sends_only_what_is_given():
    assert format_device_set(PRIVATE, 10100) == f"set=1\nprivate_key={key_hex(PRIVATE)}\nlisten_port=10100\n\n"
    assert format_device_set(listen_port=0) == "set=1\nlisten_port=0\n\n"
    with pytest.raises(ValueError, match="listen port 65536"):
        format_device_set(listen_port=65536)


def test_errno_ends_every_answer():
    assert response_errno("listen_port=1\nerrno=0\n\n") == 0
    assert response_errno("errno=-22\n\n") == -22
    with pytest.raises(ValueError, match="without errno"):
        response_errno("listen_port=1\n")


def test_get_answer_becomes_a_device_with_peer_counters():
    # As wireguard-go v0.0.20220316 writes it.
    answer = (
        f"private_key={key_hex(PRIVATE)}\nlisten_port=10100\n"
        f"public_key={key_hex(K1)}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
        "endpoint=192.0.2.2:10100\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=500000000\n"
        "tx_bytes=1184\nrx_bytes=1036\npersistent_keepalive_interval=25\n"
        "allowed_ip=10.2.0.0/16\nallowed_ip=10.20.0.0/24\n"
        f"public_key={key_hex(K2)}\npreshared_key={'0' * 64}\nprotocol_version=1\n"
        "last_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
        "persistent_keepalive_interval=0\nerrno=0\n\n"
    )
    device = parse_device("darknet", answer)
    assert (device.name, device.public_key, device.listen_port) == ("darknet", keys.public_key(PRIVATE), 10100)
    first = device.peers[K1]
    assert first.peer == WgPeer(K1, ("10.20.0.0/24", "10.2.0.0/16"), "192.0.2.2:10100", 25)
    assert (first.last_handshake, first.rx_bytes, first.tx_bytes) == (1700000000.5, 1036, 1184)
    assert device.peers[K2].peer == WgPeer(K2)
    assert device.peers[K2].last_handshake == 0


def test_a_fresh_device_has_no_key_and_no_peers():
    device = parse_device("darknet", "listen_port=40000\nerrno=0\n\n")
    assert (device.public_key, device.listen_port, device.peers) == (None, 40000, {})


def test_wireguard_go_daemonizes_itself_except_under_systemd_where_it_gets_a_unit_of_its_own():
    from heimdall.wg.userspace import launch_command

    assert launch_command("/usr/bin/wireguard-go", "darknet", systemd=False) == ["/usr/bin/wireguard-go", "darknet"]
    argv = launch_command("/usr/bin/wireguard-go", "darknet", systemd=True)
    assert argv[0] == "systemd-run" and "--unit=heimdall-wireguard-go-darknet" in argv
    assert argv[-3:] == ["/usr/bin/wireguard-go", "-f", "darknet"]  # foreground: the unit's main process


def test_an_update_that_only_adds_allowed_ips_sends_just_those_without_a_replace():
    from heimdall.wg.model import PeerPlan, WgPeer
    from heimdall.wg.userspace import format_peers_set

    key = "A" * 43 + "="
    before = WgPeer(key, ("10.129.0.0/16",))
    grown = WgPeer(key, ("10.129.0.0/16", "192.168.200.0/24"))
    request = format_peers_set(PeerPlan(update=(grown,), previous={key: before}))
    assert "replace_allowed_ips" not in request
    assert "allowed_ip=192.168.200.0/24" in request and "allowed_ip=10.129.0.0/16" not in request
    shrunk = format_peers_set(PeerPlan(update=(before,), previous={key: grown}))  # must drop one: a replace
    assert "replace_allowed_ips=true" in shrunk and "allowed_ip=10.129.0.0/16" in shrunk
