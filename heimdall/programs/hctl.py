"""hctl: the operator's command line for a Heimdall network, over a node's API.

``hctl [OPTIONS] NOUN VERB [ARGS] [--json]``. Connection options come from the
settings table (flags, ``HEIMDALL_*`` variables, /etc/heimdall files) and may
stand anywhere on the line; the commands are parsed here. Output is a table for
people, or JSON (``--json``) for scripts and Ansible. Exit status: 0 done,
1 refused or failed (the message says why), 2 usage error.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf.message import Message

from heimdall import cluster, log, settings
from heimdall.api import client
from heimdall.api.v1 import heimdall_pb2 as pb
from heimdall.api.v1 import heimdall_pb2_grpc

PROGRAM = "hctl"
EXAMPLES = """\
examples:
  hctl status
  hctl nodes list
  hctl peers authorize 9c76f92d-d55a-46c0-84d6-58c981442830
  hctl routes add 192.168.200.0/24 --via gw2
  hctl -a tcp://192.0.2.10:9000 --cluster-key-file /etc/heimdall/cluster.key peers list --json
"""

# What a command returns: data for --json, and the text people see.
Result = tuple[Any, str]
Command = Callable[[heimdall_pb2_grpc.HeimdallStub, argparse.Namespace], Awaitable[Result]]


# -- rendering (pure) ------------------------------------------------------------------------------
def as_dict(message: Message) -> dict[str, Any]:
    """Every field of ``message`` by its proto name, numbers as numbers (unlike protobuf's JSON mapping)."""
    result: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None:
            if field.is_repeated:
                value = [as_dict(item) for item in value]
            else:
                value = as_dict(value) if message.HasField(field.name) else None
        elif field.is_repeated:
            value = list(value)
        result[field.name] = value
    return result


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart; a table with no rows says so."""
    if not rows:
        return f"(no {headers[0].split()[0].lower()}s)" if headers else ""
    widths = [max(len(str(row[i])) for row in (headers, *rows)) for i in range(len(headers))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in (headers, *rows))


def seconds_since(timestamp: int, now: float) -> int | None:
    """Whole seconds from ``timestamp`` (unix seconds, 0 = never) to ``now``; None for never."""
    return max(0, int(now - timestamp)) if timestamp else None


def age(seconds: int | None) -> str:
    """``seconds`` ago, for people: 42s, 5m, 3h, 2d."""
    if seconds is None:
        return "never"
    for unit, size, limit in (("s", 1, 120), ("m", 60, 7200), ("h", 3600, 172800)):
        if seconds < limit:
            return f"{seconds // size}{unit} ago"
    return f"{seconds // 86400}d ago"


def _master_text(master: pb.Master | None) -> str:
    if master is None:
        return "(none yet)"
    return f"{master.node_id} at {master.address}, epoch {master.epoch}"


def render_status(status: pb.StatusResponse, nodes: Sequence[pb.Node], now: float) -> Result:
    """``hctl status``: the answering node, the master, every node's place in the failover order
    (oldest first: ``nodes`` come in join order), last heartbeat and the answering node's latest
    WireGuard handshake with it."""
    master = status.master if status.HasField("master") else None
    master_id = master.node_id if master is not None else None
    order = iter(range(1, len(nodes) + 1))
    node_rows = [{**as_dict(n), "failover_order": None if n.id == master_id else next(order),
                  "heartbeat_age": seconds_since(n.last_seen, now),
                  "handshake_age": seconds_since(n.last_handshake, now)} for n in nodes]
    data = {**as_dict(status), "nodes": node_rows}
    summary = "\n".join(f"{label:<9} {value}" for label, value in (
        ("node", f"{status.name} ({status.node_id})"), ("version", status.version),
        ("master", _master_text(master)), ("revision", status.revision)))
    table = render_table(("NODE ID", "NAME", "TUNNEL ADDRESS", "ENDPOINT", "ROLE", "LAST HEARTBEAT",
                          "HANDSHAKE"), [
        (n["id"], n["name"], n["tunnel_address"], n["endpoint"],
         "master" if n["failover_order"] is None else f"next #{n['failover_order']}", age(n["heartbeat_age"]),
         "(self)" if n["id"] == status.node_id else age(n["handshake_age"]))
        for n in node_rows])
    return data, f"{summary}\n\n{table}"


# -- commands ------------------------------------------------------------------------------------
async def _call(method, request: Message):
    return await method(request, timeout=client.CALL_TIMEOUT)


async def nodes_list(stub, args) -> Result:
    nodes = (await _call(stub.Nodes, pb.NodesRequest())).nodes
    now = time.time()
    rows = [(n.id, n.name, n.subnet, n.tunnel_address, n.endpoint, n.grpc_address, age(seconds_since(n.last_seen, now)))
            for n in nodes]
    return ([as_dict(n) for n in nodes],
            render_table(("NODE ID", "NAME", "SUBNET", "TUNNEL ADDRESS", "ENDPOINT", "API", "LAST HEARTBEAT"), rows))


async def nodes_remove(stub, args) -> Result:
    answer = await _call(stub.RemoveNode, pb.RemoveNodeRequest(node=args.node))
    withdrawn = f"; routes withdrawn: {', '.join(answer.routes)}" if answer.routes else ""
    return (as_dict(answer), f"removed node {answer.node.name} ({answer.node.id}), subnet {answer.node.subnet} "
                             f"released{withdrawn}")


async def peers_list(stub, args) -> Result:
    peers = (await _call(stub.Peers, pb.PeersRequest())).peers
    now = time.time()
    rows = [(p.id, p.name, p.address, p.public_key, age(seconds_since(p.last_seen, now))) for p in peers]
    return [as_dict(p) for p in peers], render_table(("PEER ID", "NAME", "ADDRESS", "PUBLIC KEY", "CONNECTED"), rows)


async def peers_authorized(stub, args) -> Result:
    peers = (await _call(stub.AuthorizedPeers, pb.AuthorizedPeersRequest())).peers
    rows = [(p.peer_id, p.public_key or "(the first key to connect)") for p in peers]
    return [as_dict(p) for p in peers], render_table(("PEER ID", "PUBLIC KEY"), rows)


async def peers_authorize(stub, args) -> Result:
    peer = (await _call(stub.AuthorizePeer, pb.AuthorizePeerRequest(peer_id=args.peer_id,
                                                                     public_key=args.public_key))).peer
    key = f"key {peer.public_key}" if peer.public_key else "the first key it connects with"
    return as_dict(peer), f"authorized peer {peer.peer_id} ({key})"


async def peers_deauthorize(stub, args) -> Result:
    await _call(stub.DeauthorizePeer, pb.DeauthorizePeerRequest(peer_id=args.peer_id))
    return {"peer_id": args.peer_id}, f"deauthorized peer {args.peer_id}"


async def routes_list(stub, args) -> Result:
    routes = (await _call(stub.Routes, pb.RoutesRequest())).routes
    return [as_dict(r) for r in routes], render_table(("NETWORK", "NODE ID"), [(r.network, r.node_id) for r in routes])


async def routes_create(stub, args) -> Result:
    route = (await _call(stub.CreateRoute, pb.CreateRouteRequest(network=args.network, node_id=args.node_id))).route
    return as_dict(route), f"route {route.network} via node {route.node_id} created"


async def routes_delete(stub, args) -> Result:
    await _call(stub.DeleteRoute, pb.DeleteRouteRequest(network=args.network))
    return {"network": args.network}, f"route {args.network} deleted"


async def status(stub, args) -> Result:
    answer, nodes = await asyncio.gather(_call(stub.Status, pb.StatusRequest()), _call(stub.Nodes, pb.NodesRequest()))
    return render_status(answer, nodes.nodes, time.time())


# -- parsing ---------------------------------------------------------------------------------------
def _global_flags() -> dict[str, bool]:
    """hctl's flags from the settings table (and the table's own), each mapped to whether it takes a value."""
    flags = {"--config": True, "--check-config": False}
    for setting in settings.SETTINGS:
        if PROGRAM in setting.programs:
            for flag in filter(None, (f"--{setting.name}", setting.short)):
                flags[flag] = setting.parse is not None
    return flags


def split_arguments(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(connection options for the settings table, the command and its arguments).

    Connection options may stand anywhere on the line, as people type them.
    """
    flags = _global_flags()
    options: list[str] = []
    command: list[str] = []
    args = iter(argv)
    for arg in args:
        if arg == "--":
            command += [arg, *args]
            break
        name = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if name not in flags:
            command.append(arg)
            continue
        options.append(arg)
        if flags[name] and "=" not in arg:
            value = next(args, None)  # missing: the settings parser says so
            if value is not None:
                options.append(value)
    return options, command


def _options_help() -> str:
    """The connection options, for the epilog of ``hctl --help``."""
    lines = [f"connection options (anywhere on the line; also as {settings.ENV_PREFIX}<OPTION> variables or in "
             f"{settings.SHARED_CONFIG} / {settings.CONFIG_DIR}/hctl.conf):"]
    for setting in settings.SETTINGS:
        if PROGRAM in setting.programs:
            flag = ", ".join(filter(None, (setting.short, f"--{setting.name}")))
            if setting.parse is not None:
                flag += f" {setting.name.rsplit('-', 1)[-1].upper()}"
            lines.append(f"  {flag:<30} {setting.help}")
    lines += ["", "Without -a, hctl uses the node's operator socket (--operator-socket) when it exists, else "
              "tcp://127.0.0.1:9000.", "Over TCP, operator commands need a TLS client certificate or the cluster "
              "key (--cluster-key-file, used when readable)."]
    return "\n".join(lines)


def _verb(verbs, name: str, run: Command, help_text: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = verbs.add_parser(name, help=help_text, description=description or help_text)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)
    return parser


def _noun(nouns, name: str, help_text: str, examples: str) -> Any:
    parser = nouns.add_parser(name, help=help_text, description=f"{help_text}\n\nexamples:\n{examples}",
                              epilog=f"Connection options: see {PROGRAM} --help.",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser.add_subparsers(dest="verb", metavar="VERB", required=True, prog=f"{PROGRAM} {name}")


def command_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"{PROGRAM} [connection options] COMMAND VERB [arguments] [--json]",
        description="Operate a Heimdall network through a node's API.\n\n" + EXAMPLES,
        epilog=_options_help())
    nouns = parser.add_subparsers(dest="noun", metavar="COMMAND", required=True, prog=PROGRAM)

    nodes = _noun(nouns, "nodes", "The gateway nodes of the cluster.",
                  "  hctl nodes list --json\n  hctl nodes remove gw3\n")
    _verb(nodes, "list", nodes_list, "list every node: subnet, tunnel address, endpoint, last heartbeat")
    remove = _verb(nodes, "remove", nodes_remove, "take a node out for good: tunnels, names, subnet, routes",
                   "Take a node out for good: every host drops its WireGuard entry and its names, its subnet "
                   "goes back to the pool and its routes are withdrawn. Stop its daemons first; to come back "
                   "it must join again (delete its /var/lib/heimdall/membership.json). The master's node "
                   "cannot be removed: stop it, let the others elect a new master, then remove it.")
    remove.add_argument("node", metavar="NODE", help="the node's ID or name")

    peers = _noun(nouns, "peers", "Access-only peers, and which peer IDs may connect.",
                  "  hctl peers authorize laptop-7 --public-key xTIBA5rboUvnH4htodjb6e697QjLERt1NAB4mZqp8Dg=\n"
                  "  hctl peers authorized\n  hctl peers list --json\n  hctl peers deauthorize laptop-7\n")
    _verb(peers, "list", peers_list, "list the peers that have connected")
    _verb(peers, "authorized", peers_authorized, "list the authorized peer IDs (connected or not)")
    authorize = _verb(peers, "authorize", peers_authorize, "allow a peer ID to connect",
                      "Allow a peer ID to connect. Without --public-key the first key it connects with is bound "
                      "to it; authorizing an already authorized ID again keeps its key.")
    authorize.add_argument("peer_id", metavar="ID", help="the peer's ID (heimdall-peer's --id)")
    authorize.add_argument("--public-key", default="", metavar="KEY",
                           help="only this WireGuard public key may connect as ID (sets or changes the pin)")
    deauthorize = _verb(peers, "deauthorize", peers_deauthorize,
                        "withdraw a peer's authorization: its tunnels are removed everywhere")
    deauthorize.add_argument("peer_id", metavar="ID")

    routes = _noun(nouns, "routes", "Extra networks published via a node.",
                   "  hctl routes add 192.168.200.0/24 --via gw2\n"
                   "  hctl routes create --node-id gw2 --network 192.168.200.0/24\n"
                   "  hctl routes list\n  hctl routes delete 192.168.200.0/24\n")
    _verb(routes, "list", routes_list, "list the published networks and their nodes")
    create = _verb(routes, "create", routes_create, "publish a network via a node (every node and peer routes it)")
    create.add_argument("--node-id", required=True, metavar="ID", help="the node that routes the network")
    create.add_argument("--network", required=True, metavar="NET", help="the network, e.g. 192.168.200.0/24")
    add = _verb(routes, "add", routes_create, "the same as create: routes add NET --via NODE")
    add.add_argument("network", metavar="NET")
    add.add_argument("--via", dest="node_id", required=True, metavar="NODE", help="the node ID that routes NET")
    delete = _verb(routes, "delete", routes_delete, "withdraw a published network")
    delete.add_argument("network", metavar="NET")

    _verb(nouns, "status", status, "the answering node, the master, the failover order (oldest node first) "
          "and every node's last heartbeat")
    return parser


# -- running ---------------------------------------------------------------------------------------
def target_address(config: settings.Config, options: Sequence[str]) -> str:
    """``-a`` when given (flag or HEIMDALL_ADDR), else the operator socket when it exists, else ``addr``.

    The shared config file's ``addr`` is a node's listen address; the operator
    socket is the better way to the same API, so only an explicit address wins.
    """
    explicit = any(o in ("-a", "--addr") or o.startswith("--addr=") for o in options) or "HEIMDALL_ADDR" in os.environ
    socket = config.operator_socket
    if not explicit and socket is not None and socket.exists():
        return f"unix://{socket}"
    return client.normalize(config.addr)


def operator_key(config: settings.Config) -> bytes | None:
    """The cluster key to sign calls with: ``--cluster-key``, or the key file when it exists and is readable."""
    key_file = config.cluster_key_file
    if not config.cluster_key and (key_file is None or not key_file.exists()):
        return None
    try:
        return cluster.load_cluster_key(config.cluster_key, key_file)
    except PermissionError:
        return None  # someone else's key (not root on a node): go without


async def execute(config: settings.Config, args: argparse.Namespace, address: str) -> Result:
    key = None if address.startswith("unix://") else operator_key(config)
    async with client.dial(address, client.TlsOptions.from_config(config), cluster_key=key) as channel:
        return await args.run(heimdall_pb2_grpc.HeimdallStub(channel), args)


def main(argv: list[str] | None = None) -> int:
    options, command = split_arguments(sys.argv[1:] if argv is None else argv)
    checking = "--check-config" in options
    args = None if checking else command_parser().parse_args(command)  # exits: 0 after --help, 2 on misuse
    try:
        config, _ = settings.load(PROGRAM, options)
    except settings.ConfigError as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 2
    if checking:
        print(settings.describe(config))
        return 0
    log.setup(config.debug)
    try:
        address = target_address(config, options)
        data, text = asyncio.run(execute(config, args, address))
    except grpc.aio.AioRpcError as exc:
        print(f"{PROGRAM}: {client.describe(exc, address)}", file=sys.stderr)
        return 1
    except (settings.ConfigError, cluster.ClusterKeyError, client.ApiUnavailable) as exc:
        print(f"{PROGRAM}: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(data, indent=2) if args.json else text)
    return 0
