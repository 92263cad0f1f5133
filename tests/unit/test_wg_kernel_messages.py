"""Translation between Heimdall's peers and kernel WireGuard netlink messages.

Replies are encoded and decoded with pyroute2's own message class, as they
would come from the kernel, including a device split over two messages.
"""
from socket import AF_INET, AF_INET6, inet_pton

import pytest
from pyroute2.netlink.generic.wireguard import wgmsg

from heimdall.wg import keys
from heimdall.wg.kernel import parse_device, peer_request
from heimdall.wg.model import split_endpoint
from heimdall.wg.model import WgPeer

PRIVATE = keys.generate_private_key()
K1, K2 = (keys.public_key(keys.generate_private_key()) for _ in range(2))


def allowed_ip(network: str) -> dict:
    address, prefix = network.split("/")
    family = AF_INET6 if ":" in address else AF_INET
    return {"attrs": [
        ["WGALLOWEDIP_A_FAMILY", family],
        ["WGALLOWEDIP_A_IPADDR", inet_pton(family, address)],
        ["WGALLOWEDIP_A_CIDR_MASK", int(prefix)],
    ]}


def reply(device_attrs: list, peers: list[list]) -> wgmsg:
    """A WG_CMD_GET_DEVICE reply as the kernel sends it, decoded by pyroute2."""
    msg = wgmsg()
    msg["cmd"], msg["version"] = 0, 1
    msg["attrs"] = [["WGDEVICE_A_IFNAME", "wg0"], *device_attrs,
                    ["WGDEVICE_A_PEERS", [{"attrs": attrs} for attrs in peers]]]
    msg.encode()
    decoded = wgmsg(msg.data)
    decoded.decode()
    return decoded


def test_endpoints_parse_as_ipv4_or_bracketed_ipv6():
    assert split_endpoint("192.0.2.1:10100") == ("192.0.2.1", 10100)
    assert split_endpoint("[2001:db8::1]:51820") == ("2001:db8::1", 51820)


@pytest.mark.parametrize("bad", ["gw1.example:10100", "2001:db8::1:10100", "[192.0.2.1]:1", "192.0.2.1", "192.0.2.1:0", "192.0.2.1:70000"])
def test_malformed_endpoints_are_rejected(bad):
    with pytest.raises(ValueError, match="not IPv4:port"):
        split_endpoint(bad)


def test_peer_request_replaces_allowed_ips_and_sets_keepalive():
    request = peer_request(WgPeer(K1, ("10.2.0.0/16", "10.1.0.0/16"), "[2001:db8::1]:10100", 25))
    assert request == {
        "public_key": K1,
        "allowed_ips": ["10.1.0.0/16", "10.2.0.0/16"],
        "replace_allowed_ips": True,
        "persistent_keepalive": 25,
        "endpoint_addr": "2001:db8::1",
        "endpoint_port": 10100,
    }


def test_peer_request_without_endpoint_keeps_a_roamed_one_and_clears_keepalive():
    request = peer_request(WgPeer(K1))
    assert "endpoint_addr" not in request
    assert request["persistent_keepalive"] == 0
    assert request["allowed_ips"] == []


def test_an_update_that_keeps_every_allowed_ip_adds_just_the_new_ones_without_a_replace():
    before = WgPeer(K1, ("10.2.0.0/16",), "192.0.2.2:10100")
    grown = WgPeer(K1, ("10.2.0.0/16", "10.200.0.0/24"), "192.0.2.2:10100")
    request = peer_request(grown, before)
    assert "replace_allowed_ips" not in request and request["allowed_ips"] == ["10.200.0.0/24"]
    assert "allowed_ips" not in peer_request(WgPeer(K1, before.allowed_ips, None, 25), before)  # keepalive only
    shrunk = peer_request(before, grown)  # must drop one: a replace
    assert shrunk["replace_allowed_ips"] is True and shrunk["allowed_ips"] == ["10.2.0.0/16"]


def test_device_reply_becomes_peers_with_counters():
    device = parse_device("wg0", [reply(
        [["WGDEVICE_A_PUBLIC_KEY", keys.public_key(PRIVATE)], ["WGDEVICE_A_LISTEN_PORT", 10100]],
        [[["WGPEER_A_PUBLIC_KEY", K1],
          ["WGPEER_A_ENDPOINT", {"addr": "2001:db8::7", "port": 4444}],
          ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
          ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 1700000000, "tv_nsec": 500000000}],
          ["WGPEER_A_RX_BYTES", 1234], ["WGPEER_A_TX_BYTES", 5678],
          ["WGPEER_A_ALLOWEDIPS", [allowed_ip("10.1.0.0/16"), allowed_ip("fd00::/64")]]],
         [["WGPEER_A_PUBLIC_KEY", K2],
          ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 0],
          ["WGPEER_A_LAST_HANDSHAKE_TIME", {"tv_sec": 0, "tv_nsec": 0}],
          ["WGPEER_A_RX_BYTES", 0], ["WGPEER_A_TX_BYTES", 0],
          ["WGPEER_A_ALLOWEDIPS", []]]],
    )])
    assert (device.name, device.public_key, device.listen_port) == ("wg0", keys.public_key(PRIVATE), 10100)
    one, two = device.peers[K1], device.peers[K2]
    assert one.peer == WgPeer(K1, ("10.1.0.0/16", "fd00::/64"), "[2001:db8::7]:4444", 25)
    assert (one.last_handshake, one.rx_bytes, one.tx_bytes) == (1700000000.5, 1234, 5678)
    assert two.peer == WgPeer(K2)
    assert two.last_handshake == 0.0


def test_a_peer_split_over_two_messages_is_merged():
    full = [["WGPEER_A_PUBLIC_KEY", K1], ["WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL", 25],
            ["WGPEER_A_RX_BYTES", 10], ["WGPEER_A_ALLOWEDIPS", [allowed_ip("10.1.0.0/16")]]]
    rest = [["WGPEER_A_PUBLIC_KEY", K1], ["WGPEER_A_ALLOWEDIPS", [allowed_ip("10.200.0.0/24")]]]
    device = parse_device("wg0", [
        reply([["WGDEVICE_A_LISTEN_PORT", 10100]], [full]),
        reply([], [rest]),
    ])
    assert device.public_key is None  # no private key set yet
    assert device.listen_port == 10100
    assert device.peers[K1].peer == WgPeer(K1, ("10.1.0.0/16", "10.200.0.0/24"), None, 25)
    assert device.peers[K1].rx_bytes == 10
