"""Pure part of address allocation: the candidates a pool offers."""
import ipaddress

import pytest

from heimdall.state import Pool


def test_node_pool_offers_every_subnet_of_the_block_size_in_order():
    pool = Pool(ipaddress.ip_network("10.128.0.0/9"), 16)
    assert pool.count == 128
    assert [pool.candidate(i) for i in (0, 1, 127)] == ["10.128.0.0/16", "10.129.0.0/16", "10.255.0.0/16"]


def test_host_pool_skips_network_and_broadcast_addresses():
    pool = Pool(ipaddress.ip_network("10.51.0.0/16"))
    assert pool.count == 65534
    assert pool.candidate(0) == "10.51.0.1"
    assert pool.candidate(pool.count - 1) == "10.51.255.254"


def test_script_spec_matches_the_candidates():
    pool = Pool(ipaddress.ip_network("10.128.0.0/9"), 16)
    spec = pool.script_spec("h", "owner", "k", "subnet")
    assert (spec["base"], spec["step"], spec["count"], spec["prefix"]) == (int(ipaddress.ip_address("10.128.0.0")),
                                                                            65536, 128, 16)
    assert "prefix" not in Pool(ipaddress.ip_network("10.51.0.0/16")).script_spec("h", "o", "k", "address")


def test_blocks_larger_than_the_pool_are_refused():
    with pytest.raises(ValueError, match="do not fit"):
        Pool(ipaddress.ip_network("10.0.0.0/16"), 8)
