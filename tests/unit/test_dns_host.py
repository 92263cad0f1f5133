"""The host resolver's /etc/resolv.conf way: installed, kept across a crash, restored byte for byte."""
import pytest

from heimdall.dns import host
from heimdall.agents.dns import upstreams_from

ORIGINAL = b"# from DHCP\nnameserver 192.0.2.53\nsearch corp.example\noptions edns0\n"


@pytest.fixture
def conf(tmp_path):
    path = tmp_path / "resolv.conf"
    path.write_bytes(ORIGINAL)
    return host.ResolvConf(path, tmp_path / "data" / host.BACKUP)


def test_install_puts_the_nodes_first_and_the_domain_first_in_the_search(conf):
    conf.install(("10.128.0.1", "10.129.0.1"), "heimdall")
    text = conf.path.read_text()
    assert host.nameservers(text) == ["10.128.0.1", "10.129.0.1", "192.0.2.53"]
    assert "search heimdall corp.example\n" in text and "options edns0\n" in text
    assert conf.original() == ORIGINAL.decode()


def test_remove_restores_the_file_byte_for_byte_in_place(conf):
    inode = conf.path.stat().st_ino
    conf.install(("10.128.0.1",), "heimdall")
    conf.install(("10.128.0.1", "10.129.0.1"), "heimdall")  # a change of nodes
    conf.remove()
    assert conf.path.read_bytes() == ORIGINAL and conf.path.stat().st_ino == inode
    assert not conf.backup.exists()
    conf.remove()  # twice is fine
    assert conf.path.read_bytes() == ORIGINAL


def test_after_a_crash_the_kept_original_is_used_again(conf):
    conf.install(("10.128.0.1",), "heimdall")
    again = host.ResolvConf(conf.path, conf.backup)  # the next run
    again.install(("10.128.0.1",), "heimdall")
    again.remove()
    assert conf.path.read_bytes() == ORIGINAL


def test_a_file_rewritten_by_someone_else_is_theirs(conf):
    conf.install(("10.128.0.1",), "heimdall")
    conf.path.write_bytes(b"nameserver 198.51.100.1\n")  # e.g. a DHCP client
    conf.remove()
    assert conf.path.read_bytes() == b"nameserver 198.51.100.1\n"
    conf.install(("10.128.0.1",), "heimdall")
    conf.remove()
    assert conf.path.read_bytes() == b"nameserver 198.51.100.1\n"


def test_resolveds_stub_is_left_to_resolved(tmp_path):
    stub = tmp_path / "stub-resolv.conf"
    stub.write_text("nameserver 127.0.0.53\n")
    link = tmp_path / "resolv.conf"
    link.symlink_to(stub)
    assert isinstance(host.host_resolver("resolv-conf", "darknet", tmp_path, link), host.ResolvConf)
    assert host.host_resolver("none", "darknet", tmp_path, link) is None
    assert isinstance(host.host_resolver("resolved", "darknet", tmp_path, link), host.Resolved)


def test_upstreams_never_include_this_server():
    text = "nameserver 10.128.0.1\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver 0.0.0.0\n"
    assert upstreams_from(text, "10.128.0.1") == [("192.0.2.53", 53), ("fe80::1%eth0", 53)]
