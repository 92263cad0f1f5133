"""Drive a WireGuard backend from inside a simulated host (the backend works on the
namespace it runs in). One action per call, JSON out, peers on stdin:

    python -m heimdall.lab.wgctl IFNAME up --address 10.1.0.1/32 [--port 10100] [--key-file F] [--hold]
    python -m heimdall.lab.wgctl IFNAME peers  < [{"public_key": ..., "allowed_ips": [...], ...}]
    python -m heimdall.lab.wgctl IFNAME show
    python -m heimdall.lab.wgctl IFNAME down

``peers`` takes the whole desired peer set, applies the diff in one apply_peers()
call (its duration is reported as "seconds") and routes every allowed IP over the
interface. ``up`` takes the private key from the host's key file (created if
missing, as the daemon does); ``up --hold`` stays alive afterwards, to be killed.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from heimdall.wg import BACKENDS, keys, make_backend
from heimdall.wg.model import WgPeer, WireGuardError, plan_peers

KEY_FILE = Path("/var/lib/heimdall/private.key")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m heimdall.lab.wgctl")
    parser.add_argument("ifname")
    parser.add_argument("action", choices=("up", "peers", "show", "down"))
    parser.add_argument("--backend", choices=BACKENDS, default="auto")
    parser.add_argument("--address", action="append", default=[], help="tunnel address (up)")
    parser.add_argument("--port", type=int, default=10100, help="listen port (up)")
    parser.add_argument("--key-file", type=Path, default=KEY_FILE, help="private key (up)")
    parser.add_argument("--hold", action="store_true", help="stay alive after up")
    args = parser.parse_args(argv)
    backend = make_backend(args.ifname, args.backend)
    try:
        result = ACTIONS[args.action](backend, args)
    except (WireGuardError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(result), flush=True)
    if args.hold:
        while True:
            time.sleep(3600)
    return 0


def _up(backend, args) -> dict:
    private_key = keys.load_or_create_private_key(args.key_file)
    index = backend.ensure_interface()
    backend.configure(private_key, args.port)
    backend.set_addresses(set(args.address))
    return {"ifindex": index, "kind": backend.kind, "public_key": keys.public_key(private_key)}


def _peers(backend, args) -> dict:
    desired = {p.public_key: p for p in (_peer(item) for item in json.load(sys.stdin))}
    plan = plan_peers(desired, backend.device().peer_configs())
    started = time.perf_counter()
    backend.apply_peers(plan)
    seconds = time.perf_counter() - started
    backend.set_routes({network for peer in desired.values() for network in peer.allowed_ips})
    return {"ifindex": backend.ifindex(), "plan": plan.summary(), "seconds": seconds}


def _peer(item: dict) -> WgPeer:
    return WgPeer(item["public_key"], tuple(item.get("allowed_ips", ())), item.get("endpoint"),
                  item.get("persistent_keepalive", 0))


def _show(backend, args) -> dict:
    device = backend.device()
    return {
        "ifindex": backend.ifindex(),
        "public_key": device.public_key,
        "listen_port": device.listen_port,
        "peers": {key: dataclasses.asdict(status) for key, status in device.peers.items()},
    }


def _down(backend, args) -> dict:
    backend.delete_interface()
    return {"ifindex": backend.ifindex()}


ACTIONS = {"up": _up, "peers": _peers, "show": _show, "down": _down}

if __name__ == "__main__":
    sys.exit(main())
