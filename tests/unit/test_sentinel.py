"""The election engine's pure parts: its config, what sentinels say, and sentinel:// URLs."""
from pathlib import Path

import pytest

from heimdall import sentinel, settings
from heimdall.sentinel import MasterView, SentinelConfig, SentinelUrl


def config(**changes) -> SentinelConfig:
    values = dict(port=26379, data_dir=Path("/var/lib/heimdall/sentinel"), password="pw", announce_ip="10.129.0.1",
                  myid=sentinel.sentinel_id("n2"), master_ip="10.128.0.1", redis_port=16379, quorum=2,
                  down_after_ms=1000)
    return SentinelConfig(**{**values, **changes})


def test_quorum_is_a_majority_of_the_voters():
    assert [sentinel.majority(n) for n in (0, 1, 2, 3, 4, 5)] == [1, 1, 2, 2, 3, 3]


def test_the_config_binds_the_tunnel_address_announces_it_and_monitors_the_master():
    text = config().render()
    lines = text.splitlines()
    assert "bind 127.0.0.1 10.129.0.1" in lines and "sentinel announce-ip 10.129.0.1" in lines
    assert "requirepass pw" in lines and "sentinel sentinel-pass pw" in lines
    assert "sentinel monitor heimdall 10.128.0.1 16379 2" in lines
    assert "sentinel auth-pass heimdall pw" in lines and "sentinel down-after-milliseconds heimdall 1000" in lines
    assert config(announce_ip="127.0.0.1").bind == ("127.0.0.1",)


def test_a_host_keeps_its_sentinel_id():
    assert sentinel.sentinel_id("n2") == sentinel.sentinel_id("n2") != sentinel.sentinel_id("n3")
    assert len(sentinel.sentinel_id("n2")) == 40 and int(sentinel.sentinel_id("n2"), 16) >= 0


def test_a_master_view_is_read_from_sentinel_master():
    reply = ["name", "heimdall", "ip", "10.128.0.1", "port", "16379", "flags", "master,s_down",
             "config-epoch", "3", "quorum", "2", "num-slaves", "2"]
    view = MasterView.from_reply(reply)
    assert (view.ip, view.port, view.config_epoch, view.quorum) == ("10.128.0.1", 16379, 3, 2)
    assert view.down and not MasterView.from_reply({**dict(zip(reply[::2], reply[1::2])), "flags": "master"}).down


def test_only_our_masters_promotions_are_taken_from_sentinel_events():
    assert sentinel.switched_to("+switch-master", "heimdall 10.128.0.1 16379 10.129.0.1 16379") == "10.129.0.1"
    assert sentinel.switched_to(
        "+promoted-slave", "slave 10.130.0.1:16379 10.130.0.1 16379 @ heimdall 10.128.0.1 16379") == "10.130.0.1"
    assert sentinel.switched_to("+switch-master", "other 10.128.0.1 16379 10.129.0.1 16379") is None
    assert sentinel.switched_to("+switch-master", "heimdall garbage") is None
    assert sentinel.switched_to("+sdown", "master heimdall 10.128.0.1 16379") is None


def test_sentinel_urls_name_the_sentinels_the_service_and_the_password():
    url = SentinelUrl.parse("sentinel://:s%40cret@10.0.0.1:26379,[fd00::1]:26380/mymaster")
    assert url.sentinels == (("10.0.0.1", 26379), ("fd00::1", 26380))
    assert (url.service, url.password) == ("mymaster", "s@cret")
    assert SentinelUrl.parse("sentinel://h:1/m").password is None


@pytest.mark.parametrize("url, error", [
    ("sentinel://10.0.0.1/mymaster", "HOST:PORT"),
    ("sentinel://10.0.0.1:99999/mymaster", "HOST:PORT"),
    ("sentinel://10.0.0.1:26379", "service name"),
    ("http://10.0.0.1:6379", "expected redis://"),
])
def test_a_bad_redis_url_is_a_configuration_error_naming_the_option(url, error):
    with pytest.raises(settings.ConfigError) as raised:
        settings.load("heimdall-store", ["--redis-url", url])
    assert "redis-url" in str(raised.value) and error in str(raised.value)
