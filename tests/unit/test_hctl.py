"""hctl's pure parts: splitting and parsing the command line, choosing the address, rendering."""
import pytest

from heimdall import settings
from heimdall.api.v1 import heimdall_pb2 as pb
from heimdall.programs import hctl

NOW = 1_700_000_000


def test_connection_options_are_taken_from_anywhere_on_the_line():
    options, command = hctl.split_arguments(
        ["-a", "tcp://192.0.2.1:9000", "peers", "--skip-verify", "list", "--cluster-key-file=/k", "--json",
         "-D", "--ca-cert", "/ca.pem"])
    assert options == ["-a", "tcp://192.0.2.1:9000", "--skip-verify", "--cluster-key-file=/k", "-D",
                       "--ca-cert", "/ca.pem"]
    assert command == ["peers", "list", "--json"]


def test_options_of_other_programs_and_everything_after_a_double_dash_stay_with_the_command():
    options, command = hctl.split_arguments(["--name", "x", "routes", "delete", "--", "-a"])
    assert options == [] and command == ["--name", "x", "routes", "delete", "--", "-a"]


def test_an_option_missing_its_value_is_left_for_the_settings_parser_to_report():
    assert hctl.split_arguments(["status", "-a"]) == (["-a"], ["status"])
    assert hctl.main(["status", "-a"]) == 2


@pytest.mark.parametrize("argv, run, fields", [
    (["routes", "add", "10.200.0.0/24", "--via", "gw2"], hctl.routes_create,
     {"network": "10.200.0.0/24", "node_id": "gw2"}),
    (["routes", "create", "--node-id", "gw2", "--network", "10.200.0.0/24"], hctl.routes_create,
     {"network": "10.200.0.0/24", "node_id": "gw2"}),
    (["routes", "delete", "10.200.0.0/24"], hctl.routes_delete, {"network": "10.200.0.0/24"}),
    (["peers", "authorize", "laptop-1", "--public-key", "K"], hctl.peers_authorize,
     {"peer_id": "laptop-1", "public_key": "K"}),
    (["peers", "authorize", "laptop-1"], hctl.peers_authorize, {"peer_id": "laptop-1", "public_key": ""}),
    (["peers", "deauthorize", "laptop-1", "--json"], hctl.peers_deauthorize, {"peer_id": "laptop-1", "json": True}),
    (["nodes", "list"], hctl.nodes_list, {"json": False}),
    (["nodes", "remove", "gw3"], hctl.nodes_remove, {"node": "gw3"}),
    (["status"], hctl.status, {}),
])
def test_commands_parse_to_their_call_and_arguments(argv, run, fields):
    args = hctl.command_parser().parse_args(argv)
    assert args.run is run
    assert {name: getattr(args, name) for name in fields} == fields


@pytest.mark.parametrize("argv", [[], ["peers"], ["routes", "create", "--network", "10.200.0.0/24"],
                                  ["routes", "add", "10.200.0.0/24"], ["nodes", "remove"], ["--name", "x", "status"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        hctl.main(argv)
    assert exit_.value.code == 2
    assert "usage: hctl" in capsys.readouterr().err


def test_a_bad_connection_option_value_exits_2(capsys):
    assert hctl.main(["-a", "tcp://host:notaport", "status"]) == 2
    assert "--addr" in capsys.readouterr().err


def test_help_names_the_commands_the_connection_options_and_the_default_address(capsys):
    with pytest.raises(SystemExit) as exit_:
        hctl.main(["--help"])
    text = capsys.readouterr().out
    assert exit_.value.code == 0
    for word in ("nodes", "peers", "routes", "status", "--cluster-key-file", "--ca-cert", "-a, --addr",
                 "operator socket", "examples:"):
        assert word in text


def test_noun_help_lists_its_verbs_with_examples(capsys):
    with pytest.raises(SystemExit):
        hctl.main(["peers", "--help"])
    text = capsys.readouterr().out
    assert text.startswith("usage: hctl peers")
    for word in ("list", "authorized", "authorize", "deauthorize", "hctl peers authorize laptop-7"):
        assert word in text


def config(tmp_path, *argv: str) -> settings.Config:
    empty = tmp_path / "empty.conf"
    empty.write_text("")
    return settings.load("hctl", ["--config", str(empty), *argv])[0]


def test_the_operator_socket_is_the_default_address_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.delenv("HEIMDALL_ADDR", raising=False)
    socket = tmp_path / "api.sock"
    options = ["--operator-socket", str(socket)]
    assert hctl.target_address(config(tmp_path, *options), options) == "tcp://127.0.0.1:9000"
    socket.touch()
    assert hctl.target_address(config(tmp_path, *options), options) == f"unix://{socket}"
    explicit = [*options, "-a", "tcp://192.0.2.1:9000"]
    assert hctl.target_address(config(tmp_path, *explicit), explicit) == "tcp://192.0.2.1:9000"
    monkeypatch.setenv("HEIMDALL_ADDR", "tcp://192.0.2.2:9000")
    assert hctl.target_address(config(tmp_path, *options), options) == "tcp://192.0.2.2:9000"


def test_the_cluster_key_signs_calls_when_given_or_its_file_is_there(tmp_path):
    key_file = tmp_path / "cluster.key"
    assert hctl.operator_key(config(tmp_path, "--cluster-key-file", str(key_file))) is None
    key_file.write_text("a cluster key of some length\n")
    key_file.chmod(0o600)
    assert hctl.operator_key(config(tmp_path, "--cluster-key-file", str(key_file))) == b"a cluster key of some length"
    assert hctl.operator_key(config(tmp_path, "--cluster-key", "another key, long enough")) == \
        b"another key, long enough"
    key_file.chmod(0o644)
    with pytest.raises(hctl.cluster.ClusterKeyError, match="readable by others"):
        hctl.operator_key(config(tmp_path, "--cluster-key-file", str(key_file)))


def test_tables_align_columns_and_say_when_empty():
    text = hctl.render_table(("PEER ID", "ADDRESS"), [("a", "10.51.0.1"), ("laptop-1", "10.51.0.22")])
    assert text.splitlines() == ["PEER ID   ADDRESS", "a         10.51.0.1", "laptop-1  10.51.0.22"]
    assert hctl.render_table(("PEER ID", "ADDRESS"), []) == "(no peers)"


@pytest.mark.parametrize("seconds, text", [(None, "never"), (0, "0s ago"), (119, "119s ago"), (120, "2m ago"),
                                           (7199, "119m ago"), (7200, "2h ago"), (172800, "2d ago")])
def test_ages_read_naturally(seconds, text):
    assert hctl.age(seconds) == text


def test_seconds_since_treats_zero_as_never_and_clock_skew_as_now():
    assert hctl.seconds_since(0, NOW) is None
    assert hctl.seconds_since(NOW - 5, NOW) == 5
    assert hctl.seconds_since(NOW + 3, NOW) == 0


def test_json_keeps_numbers_as_numbers_and_unset_messages_as_null():
    assert hctl.as_dict(pb.Node(id="n1", joined_at=NOW)) == {
        "id": "n1", "name": "", "public_key": "", "endpoint": "", "subnet": "", "tunnel_address": "",
        "grpc_address": "", "joined_at": NOW, "last_seen": 0, "last_handshake": 0}
    assert hctl.as_dict(pb.StatusResponse(revision=7))["master"] is None
    config = hctl.as_dict(pb.PeerConfig(peers=[pb.WireGuardPeer(public_key="k", allowed_ips=["10.0.0.0/16"])]))
    assert config["peers"] == [{"public_key": "k", "endpoint": "", "allowed_ips": ["10.0.0.0/16"],
                                "persistent_keepalive": 0}]


def test_status_marks_the_master_the_failover_order_and_gives_heartbeat_and_handshake_ages():
    status = pb.StatusResponse(node_id="n1", name="gw1", version="0.1.0", revision=42,
                               master=pb.Master(node_id="n2", address="10.129.0.1", epoch=3))
    nodes = [pb.Node(id="n1", name="gw1", tunnel_address="10.128.0.1", last_seen=NOW - 4),
             pb.Node(id="n2", name="gw2", tunnel_address="10.129.0.1", last_seen=0, last_handshake=NOW - 70),
             pb.Node(id="n3", name="gw3", tunnel_address="10.130.0.1", last_seen=NOW - 1)]
    data, text = hctl.render_status(status, nodes, NOW)
    assert [n["heartbeat_age"] for n in data["nodes"]] == [4, None, 1]
    assert [n["handshake_age"] for n in data["nodes"]] == [None, 70, None]
    assert [n["failover_order"] for n in data["nodes"]] == [1, None, 2]  # the oldest replica is promoted first
    assert data["master"] == {"node_id": "n2", "address": "10.129.0.1", "epoch": 3} and data["revision"] == 42
    lines = text.splitlines()
    assert lines[:4] == ["node      gw1 (n1)", "version   0.1.0", "master    n2 at 10.129.0.1, epoch 3",
                         "revision  42"]
    assert lines[-3].split() == ["n1", "gw1", "10.128.0.1", "next", "#1", "4s", "ago", "(self)"]
    assert lines[-2].split() == ["n2", "gw2", "10.129.0.1", "master", "never", "70s", "ago"]
    assert lines[-1].split() == ["n3", "gw3", "10.130.0.1", "next", "#2", "1s", "ago", "never"]


def test_status_without_a_master_says_so():
    _, text = hctl.render_status(pb.StatusResponse(node_id="n1", name="gw1"), [], NOW)
    assert "master    (none yet)" in text
