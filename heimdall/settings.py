"""Every setting of every Heimdall program, in one table.

The table drives the command-line flags, the ``HEIMDALL_<OPTION>`` environment
variables, the config files (``/etc/heimdall/heimdall.conf`` shared by all
programs, then ``/etc/heimdall/<program>.conf``) and the docs. Precedence:
flag > environment > program file > shared file > default.

Every program knows every setting, so one shared file can hold them all and a
typo in it is an error anywhere; ``--help`` shows only the program's own.
"""
from __future__ import annotations

import argparse
import io
import ipaddress
import os
import re
import socket
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import configargparse

CONFIG_DIR = Path("/etc/heimdall")
SHARED_CONFIG = CONFIG_DIR / "heimdall.conf"
ENV_PREFIX = "HEIMDALL_"

NODE = frozenset({"heimdall-store", "heimdall-wg", "heimdall-dns", "heimdall-elector", "heimdall-api"})
PEER = frozenset({"heimdall-peer"})
CLI = frozenset({"hctl"})
PROGRAMS = NODE | PEER | CLI
ALL = PROGRAMS
ELECTOR = frozenset({"heimdall-elector"})


class ConfigError(Exception):
    """The configuration is invalid; the message names the offending option."""


# -- value parsers: each raises ArgumentTypeError with a message fit for the user --
def _parser(fn: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return fn(str(text).strip())
        except (ValueError, TypeError) as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    parse.__name__ = fn.__name__
    return parse


@_parser
def port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError("port must be a number 1-65535")
    return int(text)


@_parser
def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError("must be a number of seconds") from None
    if not 0 < value < 86400:
        raise ValueError("must be greater than 0 and less than a day")
    return value


@_parser
def seconds(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 86400:
        raise ValueError("must be a whole number of seconds, 0-86400")
    return int(text)


@_parser
def ipv4_network(text: str) -> ipaddress.IPv4Network:
    net = ipaddress.ip_network(text, strict=True)
    if net.version != 4:
        raise ValueError("must be an IPv4 network")
    return net


@_parser
def prefix_length(text: str) -> int:
    if not text.isdigit() or not 8 <= int(text) <= 30:
        raise ValueError("prefix length must be a number 8-30")
    return int(text)


@_parser
def ip_address(text: str) -> str:
    return str(ipaddress.ip_address(text)) if text else ""


@_parser
def host_port(text: str) -> str:
    """ "IP:PORT" (or "[v6]:PORT"); empty means "derive it"."""
    if not text:
        return ""
    host, sep, p = text.rpartition(":")
    if not sep:
        raise ValueError("expected IP:PORT")
    ipaddress.ip_address(host.strip("[]"))
    port(p)
    return text


@_parser
def redis_url(text: str) -> str:
    """redis://, rediss:// or unix:// (as redis-py reads them), or sentinel://HOST:PORT[,...]/NAME."""
    if not text:
        return ""
    scheme = text.partition("://")[0]
    if scheme == "sentinel":
        from heimdall.sentinel import SentinelUrl

        SentinelUrl.parse(text)
    elif scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected redis://, rediss://, unix:// or sentinel:// (a Redis behind Sentinel)")
    return text


@_parser
def grpc_address(text: str) -> str:
    """tcp://HOST:PORT or unix:///path (the original's form), empty for none."""
    if not text or text.startswith("unix://"):
        return text
    rest = text[len("tcp://"):] if text.startswith("tcp://") else text
    host, sep, p = rest.rpartition(":")
    if not sep or not host:
        raise ValueError("expected tcp://HOST:PORT or unix:///PATH")
    port(p)
    return f"tcp://{rest}"


_NAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@_parser
def host_name(text: str) -> str:
    if text and not _NAME.match(text):
        raise ValueError("must be a hostname label: letters, digits, '-', at most 63 characters")
    return text


@_parser
def identifier(text: str) -> str:
    if text and not _ID.match(text):
        raise ValueError("must be 1-64 of letters, digits, '.', '_', '-' (a UUID fits)")
    return text


@_parser
def interface_name(text: str) -> str:
    if not re.match(r"^[A-Za-z0-9_.-]{1,15}$", text):
        raise ValueError("must be 1-15 of letters, digits, '_', '.', '-'")
    return text


def choice(*options: str) -> Callable[[str], str]:
    @_parser
    def one_of(text: str) -> str:
        if text not in options:
            raise ValueError(f"choose from {', '.join(options)}")
        return text

    return one_of


@_parser
def text_value(text: str) -> str:
    return text


@_parser
def path(text: str) -> Path | None:
    return Path(text) if text else None


@dataclass(frozen=True)
class Setting:
    name: str  # long flag without dashes; env var and config key derive from it
    parse: Callable[[str], Any] | None  # None for on/off switches
    default: str | bool | None
    help: str
    programs: frozenset[str]
    short: str | None = None
    repeat: bool = False

    @property
    def dest(self) -> str:
        return self.name.replace("-", "_")

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper().replace("-", "_")


def _hostname() -> str:
    return socket.gethostname().split(".")[0]


SETTINGS: tuple[Setting, ...] = (
    # -- every program
    Setting("debug", None, False, "log debug messages", ALL, short="-D"),
    Setting("data-dir", path, "/var/lib/heimdall", "state directory (keys, node identity, Redis data)", NODE | PEER),
    # -- identity
    Setting("id", identifier, "", "this host's ID (default: a UUID created once and kept in the data dir)", NODE | PEER),
    Setting("name", host_name, "", "this host's name in the network and in DNS (default: the hostname)", NODE | PEER),
    # -- cluster membership and state
    Setting("cluster-key-file", path, "/etc/heimdall/cluster.key",
            "root-only file holding the cluster key that admits nodes", NODE | CLI),
    Setting("cluster-key", text_value, "",
            "the cluster key itself (prefer --cluster-key-file: flags are visible in ps)", NODE | CLI),
    Setting("peer", grpc_address, "",
            "gRPC address of an existing node to join (tcp://IP:9000); empty: bootstrap a new cluster", NODE),
    Setting("redis-port", port, "16379", "port of the node's embedded redis-server", NODE),
    Setting("redis-url", redis_url, "", "use this existing Redis instead of the embedded one (redis://..., or "
            "sentinel://[:PASSWORD@]HOST:PORT[,HOST:PORT...]/NAME for one behind its owner's Sentinel)", NODE),
    # -- election
    Setting("sentinel-port", port, "26379", "port of the node's Redis Sentinel (heimdall-elector; tunnel address only)",
            NODE),
    Setting("failover-after", positive_float, "1",
            "seconds the master may stay silent before the sentinels call it down and elect another", NODE),
    Setting("witness", None, False, "heimdall-elector only: run just a sentinel, as the tie-breaking voter of a "
            "two-node cluster (on a peer or any host that reaches the nodes' tunnel addresses)", ELECTOR),
    Setting("witness-of", ip_address, None, "a witness: tunnel address of a node whose sentinel it asks where the "
            "master is (repeatable)", ELECTOR, repeat=True),
    Setting("sentinel-announce-ip", ip_address, "", "a witness: the address the nodes reach its sentinel on "
            "(default: its own address on --interface-name)", ELECTOR),
    # -- networks
    Setting("node-network", ipv4_network, "10.128.0.0/9", "pool that node subnets are allocated from", NODE),
    Setting("node-subnet-prefix", prefix_length, "16", "prefix length of each node's subnet", NODE),
    Setting("peer-network", ipv4_network, "10.51.0.0/16", "network that peers get their /32 from", NODE),
    Setting("allow-peer-to-peer", None, False, "let peers reach each other (routed through a node)", NODE),
    Setting("node-interface", text_value, "",
            "uplink interface for NAT and the default endpoint (default: the default route's interface)", NODE),
    Setting("endpoint-ip", ip_address, "", "public IP other nodes use to reach this one (default: node-interface's)", NODE),
    Setting("endpoint-port", port, "10100", "WireGuard UDP listen port", NODE),
    Setting("interface-name", interface_name, "darknet", "WireGuard interface name", NODE | PEER),
    Setting("wireguard-backend", choice("auto", "kernel", "userspace"), "auto",
            "kernel WireGuard, userspace wireguard-go, or auto (kernel when the module exists)", NODE | PEER),
    Setting("resync-interval", positive_float, "30", "seconds between full reconciles (the safety net for lost events)",
            NODE | PEER),
    Setting("heartbeat-interval", positive_float, "2", "seconds between liveness heartbeats", NODE),
    # -- API
    Setting("addr", grpc_address, "tcp://0.0.0.0:9000",
            "gRPC listen address (node) or the node to talk to (hctl; peer: the original hpeer flag, "
            "same as one --node-addr)", NODE | PEER | CLI, short="-a"),
    Setting("advertise-grpc-address", grpc_address, "", "gRPC address other hosts should use for this node", NODE),
    Setting("operator-socket", path, "/run/heimdall/api.sock", "root-only unix socket for local operator commands",
            NODE | CLI),
    Setting("authorized-peer", identifier, None, "authorize this peer ID at start (repeatable)", NODE, repeat=True),
    Setting("cert", path, "", "TLS certificate: a node's API certificate (also presented when it joins another "
            "node); the client certificate of hctl and peers", NODE | PEER | CLI, short="-c"),
    Setting("key", path, "", "TLS private key of --cert", NODE | PEER | CLI, short="-k"),
    Setting("client-cert", path, "", "node: CA that API clients' certificates must chain to (mutual TLS: every "
            "client needs one, and one is an operator credential); hctl and peers: same as --cert",
            NODE | PEER | CLI),
    Setting("client-key", path, "", "hctl and peers: same as --key", NODE | PEER | CLI),
    Setting("skip-verify", None, False, "do not verify the server's TLS certificate", NODE | PEER | CLI),
    Setting("ca-cert", path, "", "CA certificate that signed the API server's certificate, for outgoing "
            "connections (default: the system's CAs)", NODE | PEER | CLI),
    # -- DNS
    Setting("dns-address", host_port, "", "DNS listen address (default: the tunnel address, port 53)",
            frozenset({"heimdall-dns"})),
    Setting("dns-upstream-address", host_port, "", "where other names are forwarded (default: from /etc/resolv.conf)",
            frozenset({"heimdall-dns"})),
    Setting("domain", host_name, "heimdall", "DNS domain of the network's names", frozenset({"heimdall-dns"})),
    Setting("dns-ttl", seconds, "5", "TTL of heimdall-dns's answers (and of negative answers), in seconds",
            frozenset({"heimdall-dns"})),
    Setting("dns-resolve-names", None, False, "make the network's names resolvable on this node too, while "
            "heimdall-dns runs (see dns-resolver)", frozenset({"heimdall-dns"})),
    Setting("dns-resolver", choice("auto", "resolved", "resolv-conf", "none"), "auto",
            "how the network's names are installed on the host: systemd-resolved split DNS on the WireGuard "
            "interface, a reversible change to /etc/resolv.conf, auto (resolved when /etc/resolv.conf is its "
            "stub), or none", PEER | frozenset({"heimdall-dns"})),
    # -- peer daemon
    Setting("node-addr", grpc_address, None, "a node's gRPC address (repeatable; fail-over in order)", PEER, repeat=True),
    Setting("update-interval", positive_float, "30", "seconds between full resyncs with the node", PEER),
)


@dataclass(frozen=True)
class Config:
    """Parsed settings of one program (attribute access by dest name)."""

    program: str
    values: dict[str, Any]
    files: tuple[Path, ...]

    def __getattr__(self, item: str) -> Any:
        try:
            return self.values[item]
        except KeyError:
            raise AttributeError(item) from None


class _ConfigFileParser(configargparse.DefaultConfigFileParser):
    """The default syntax, but a setting given on two lines is never silently half-ignored:
    lines of a repeatable setting add up (like repeated flags), any other repeat is an error."""

    def parse(self, stream):
        repeatable = {s.name for s in SETTINGS if s.repeat}
        name = getattr(stream, "name", "stream")
        merged: dict[str, Any] = {}
        for number, line in enumerate(stream, 1):
            one = io.StringIO(line)
            one.name = name
            for key, value in super().parse(one).items():
                if key not in merged:
                    merged[key] = value
                elif key in repeatable:
                    merged[key] = _as_list(merged[key]) + _as_list(value)
                else:
                    raise configargparse.ConfigFileParserException(
                        f"{name} line {number}: '{key}' is set a second time")
        return merged


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


class _Parser(configargparse.ArgParser):
    def error(self, message: str):  # argparse would print and exit 2; we decide the exit code
        raise ConfigError(message)


def config_files(program: str, explicit: Path | None = None) -> list[Path]:
    """The files read, lowest precedence first. ``--config FILE`` replaces the shared file."""
    return [explicit or SHARED_CONFIG, CONFIG_DIR / f"{program}.conf"]


def build_parser(program: str, files: list[Path]) -> _Parser:
    parser = _Parser(
        prog=program,
        default_config_files=[str(f) for f in files],
        auto_env_var_prefix=ENV_PREFIX,
        usage=f"{program} [options]",
        description=f"{program}: part of Heimdall, a WireGuard private network for gateway fleets.",
        formatter_class=configargparse.ArgumentDefaultsHelpFormatter,
        config_file_parser_class=_ConfigFileParser,
        epilog=f"Every option can also be set as {ENV_PREFIX}<OPTION> (e.g. {ENV_PREFIX}DATA_DIR) "
        f"or as 'option = value' in {files[0]} or {files[-1]}. Precedence: flag > environment > file > default.",
    )
    parser.add_argument("--config", metavar="FILE",
                        help=f"read settings from FILE instead of {SHARED_CONFIG}")
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it, exit 0 if valid, 1 if not")
    for s in SETTINGS:
        flags = [s.short, f"--{s.name}"] if s.short else [f"--{s.name}"]
        shown = s.help if program in s.programs else argparse.SUPPRESS
        if s.parse is None:
            parser.add_argument(*flags, dest=s.dest, action="store_true", default=bool(s.default), help=shown)
        elif s.repeat:
            parser.add_argument(*flags, dest=s.dest, action="append", type=s.parse, default=None, help=shown)
        else:
            parser.add_argument(*flags, dest=s.dest, type=s.parse, default=s.default, help=shown)
    return parser


def peer_node_addresses(values: dict[str, Any]) -> list[str]:
    """The nodes a peer may connect to: --node-addr, then --addr when set (its default is a
    node's listen address, never a destination)."""
    extra = [values["addr"]] if values["addr"] != _default("addr") else []
    return list(dict.fromkeys([*values["node_addr"], *extra]))


def _default(name: str) -> Any:
    return next(s.default for s in SETTINGS if s.name == name)


def _cross_check(program: str, values: dict[str, Any]) -> None:
    """Checks that involve several options."""
    if program in PEER and not peer_node_addresses(values):
        raise ConfigError("--node-addr: no node to connect to; set --node-addr tcp://NODE:9000 (repeatable)")
    pool, prefix, peers = values["node_network"], values["node_subnet_prefix"], values["peer_network"]
    if prefix < pool.prefixlen:
        raise ConfigError(f"--node-subnet-prefix /{prefix} is larger than --node-network {pool}")
    if pool.overlaps(peers):
        raise ConfigError(f"--peer-network {peers} overlaps --node-network {pool}")


def _explicit_config(argv: list[str]) -> Path | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return Path(argv[i + 1])
        if arg.startswith("--config="):
            return Path(arg.split("=", 1)[1])
    env = os.environ.get(f"{ENV_PREFIX}CONFIG")
    return Path(env) if env else None


def _origin(message: str, argv: list[str], files: list[Path]) -> str:
    """Where the value named in an argparse message came from, for the error text."""
    if message.startswith("unrecognized arguments"):
        unknown = [u.split("=")[0][2:] for u in message.split(":", 1)[1].split() if u.startswith("--")]
        places = [f"'{name}' in {f}" for name in unknown for f in files
                  if f.exists() and re.search(rf"^\s*{re.escape(name)}\s*[=:]", f.read_text(), re.M)]
        return f" (unknown option {', '.join(places)})" if places else ""
    match = re.search(r"argument (?:-\w, )?--([\w-]+)", message)
    if not match:
        return ""
    setting = next((s for s in SETTINGS if s.name == match.group(1)), None)
    if setting is None or any(a == f"--{setting.name}" or a.startswith(f"--{setting.name}=") or a == setting.short
                              for a in argv):
        return ""
    if setting.env in os.environ:
        return f" (from environment variable {setting.env})"
    for f in reversed(files):
        if f.exists() and re.search(rf"^\s*{re.escape(setting.name)}\s*[=:]", f.read_text(), re.M):
            return f" (from {f})"
    return ""


def load(program: str, argv: list[str] | None = None) -> tuple[Config, bool]:
    """Parse flags, environment and files. Returns (config, check_only).

    Raises ConfigError naming the offending option.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    explicit = _explicit_config(argv)
    if explicit is not None and not explicit.exists():
        raise ConfigError(f"--config {explicit}: no such file")
    files = config_files(program, explicit)
    parser = build_parser(program, files)
    try:
        ns = parser.parse_args(argv)
    except ConfigError as exc:
        raise ConfigError(f"{exc}{_origin(str(exc), argv, files)}") from None
    values = vars(ns)
    check_only = values.pop("check_config")
    values.pop("config")
    for s in SETTINGS:
        if s.repeat and values[s.dest] is None:
            values[s.dest] = []
    if not values["name"]:
        values["name"] = _hostname()
    _cross_check(program, values)
    return Config(program, values, tuple(f for f in files if f.exists())), check_only


def describe(config: Config) -> str:
    """The effective settings of the program, as config-file lines (secrets masked)."""
    lines = [f"# {config.program}: effective configuration"]
    for s in SETTINGS:
        if config.program not in s.programs:
            continue
        value = config.values[s.dest]
        if s.name == "cluster-key" and value:
            value = "********"
        if isinstance(value, list):
            value = "[" + ", ".join(map(str, value)) + "]"
        lines.append(f"{s.name} = {'' if value is None else value}")
    return "\n".join(lines)
