"""Config precedence, validation and --check-config, driven by the one settings table."""
from pathlib import Path

import pytest

from heimdall import settings
from heimdall.daemon import run_program

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "heimdall" / "heimdall.conf"


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """Point the shared and per-program config files at a temp dir; clear HEIMDALL_* env."""
    monkeypatch.setattr(settings, "CONFIG_DIR", tmp_path)
    monkeypatch.setattr(settings, "SHARED_CONFIG", tmp_path / "heimdall.conf")
    for name in list(__import__("os").environ):
        if name.startswith(settings.ENV_PREFIX):
            monkeypatch.delenv(name)
    return tmp_path


def load(argv=(), program="heimdall-wg"):
    return settings.load(program, list(argv))[0]


def test_defaults_mirror_the_original(config_dir):
    c = load()
    assert (c.redis_port, c.endpoint_port, c.interface_name) == (16379, 10100, "darknet")
    assert str(c.peer_network) == "10.51.0.0/16" and c.node_subnet_prefix == 16
    assert str(c.data_dir) == "/var/lib/heimdall"
    assert load(program="hctl").addr == "tcp://0.0.0.0:9000"
    assert c.name  # the hostname


def test_precedence_flag_over_env_over_program_file_over_shared_file(config_dir, monkeypatch):
    (config_dir / "heimdall.conf").write_text("redis-port = 1001\nendpoint-port = 1001\nname = shared\nid = shared\n")
    (config_dir / "heimdall-wg.conf").write_text("redis-port = 1002\nendpoint-port = 1002\nname = program\n")
    monkeypatch.setenv("HEIMDALL_REDIS_PORT", "1003")
    c = load(["--redis-port", "1004"])
    assert c.redis_port == 1004  # flag
    monkeypatch.setenv("HEIMDALL_ENDPOINT_PORT", "1003")
    c = load()
    assert c.redis_port == 1003 and c.endpoint_port == 1003  # environment
    assert c.name == "program"  # program file over shared file
    assert c.id == "shared"  # shared file over default
    assert load(program="heimdall-dns").name == "shared"  # another program's file is not read


def test_repeatable_and_switch_options(config_dir, monkeypatch):
    c = load(["--authorized-peer", "a1", "--authorized-peer", "b2", "--allow-peer-to-peer"])
    assert c.authorized_peer == ["a1", "b2"] and c.allow_peer_to_peer is True
    monkeypatch.setenv("HEIMDALL_AUTHORIZED_PEER", "[c3, d4]")
    assert load().authorized_peer == ["c3", "d4"]
    assert load(["-D"]).debug is True


@pytest.mark.parametrize(
    "argv, named",
    [
        (["--redis-port", "99999"], "--redis-port"),
        (["--node-network", "10.0.0.0/8"], "--peer-network"),  # overlaps the peer network
        (["--node-network", "10.128.0.0/9", "--node-subnet-prefix", "8"], "--node-subnet-prefix"),
        (["--interface-name", "much-too-long-name"], "--interface-name"),
        (["--peer", "tcp://host"], "--peer"),
        (["--endpoint-ip", "not-an-ip"], "--endpoint-ip"),
        (["--wireguard-backend", "magic"], "--wireguard-backend"),
        (["--id", "bad id!"], "--id"),
        (["--resync-interval", "-1"], "--resync-interval"),
        (["--no-such-option"], "--no-such-option"),
    ],
)
def test_invalid_values_name_the_option(config_dir, argv, named):
    with pytest.raises(settings.ConfigError, match=named):
        load(argv)


def test_errors_say_where_a_bad_value_came_from(config_dir, monkeypatch):
    (config_dir / "heimdall.conf").write_text("bogus-key = 1\n")
    with pytest.raises(settings.ConfigError, match="bogus-key.*heimdall.conf"):
        load()
    (config_dir / "heimdall.conf").write_text("endpoint-port = seventy\n")
    with pytest.raises(settings.ConfigError, match="endpoint-port.*from .*heimdall.conf"):
        load()
    (config_dir / "heimdall.conf").write_text("")
    monkeypatch.setenv("HEIMDALL_ENDPOINT_PORT", "0")
    with pytest.raises(settings.ConfigError, match="HEIMDALL_ENDPOINT_PORT"):
        load()


def not_started(config):
    pytest.fail("checking a configuration must not start the daemon")


def test_check_config_exit_codes(config_dir, capsys):
    assert run_program("heimdall-wg", not_started, ["--check-config"]) == 0
    assert "configuration OK" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_program("heimdall-wg", not_started, ["--check-config", "--endpoint-port", "0"])
    assert exc.value.code == 1
    assert "--endpoint-port" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        run_program("heimdall-wg", not_started, ["--endpoint-port", "0"])
    assert exc.value.code == 2  # usage error when not just checking


def test_check_config_masks_the_cluster_key(config_dir, capsys):
    assert run_program("heimdall-api", not_started, ["--check-config", "--cluster-key", "s3cret"]) == 0
    assert "s3cret" not in capsys.readouterr().out


def test_explicit_config_file_replaces_the_shared_one(config_dir, tmp_path):
    (config_dir / "heimdall.conf").write_text("name = shared\n")
    other = tmp_path / "candidate.conf"
    other.write_text("name = candidate\n")
    assert load(["--config", str(other)]).name == "candidate"
    with pytest.raises(settings.ConfigError, match="no such file"):
        load(["--config", str(tmp_path / "missing.conf")])


@pytest.mark.parametrize("program", sorted(settings.PROGRAMS))
def test_example_config_is_valid_for_every_program(config_dir, program):
    program_example = EXAMPLE.with_name(f"{program}.conf")  # e.g. a peer's node addresses
    if program_example.exists():
        (config_dir / program_example.name).write_text(program_example.read_text())
    assert settings.load(program, ["--config", str(EXAMPLE)])[0].interface_name == "darknet"


def test_a_peer_without_a_node_to_connect_to_is_refused(config_dir):
    with pytest.raises(settings.ConfigError, match="--node-addr: no node to connect to"):
        settings.load("heimdall-peer", [])
    assert settings.peer_node_addresses(settings.load("heimdall-peer", ["-a", "tcp://192.0.2.9:9000"])[0].values) == [
        "tcp://192.0.2.9:9000"]


def test_help_shows_only_the_programs_own_options(config_dir):
    peer_help = settings.build_parser("heimdall-peer", settings.config_files("heimdall-peer")).format_help()
    assert "--node-addr" in peer_help and "--redis-port" not in peer_help
    assert "HEIMDALL_" in peer_help


def test_repeatable_setting_on_several_lines_adds_up(tmp_path):
    conf = tmp_path / "peer.conf"
    conf.write_text("node-addr = tcp://192.0.2.1:9000\nnode-addr = [tcp://192.0.2.2:9000, tcp://192.0.2.3:9000]\n")
    config, _ = settings.load("heimdall-peer", ["--config", str(conf)])
    assert config.node_addr == ["tcp://192.0.2.1:9000", "tcp://192.0.2.2:9000", "tcp://192.0.2.3:9000"]


def test_other_settings_set_twice_in_a_file_are_refused_with_the_line(tmp_path):
    conf = tmp_path / "heimdall.conf"
    conf.write_text("# comment\nredis-port = 1\nredis-port = 2\n")
    with pytest.raises(settings.ConfigError, match=r"line 3: 'redis-port' is set a second time"):
        settings.load("heimdall-store", ["--config", str(conf)])
