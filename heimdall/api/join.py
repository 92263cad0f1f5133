"""A node's one-time join, run as a short-lived child process by heimdall-wg.

gRPC adds about 18 MB to a Python process and a node needs it exactly once, to
join; running the call here keeps it out of the long-running daemon. The request
(cluster key included) comes as JSON on stdin, never on the command line; the
answer goes to stdout as JSON. Exit status: 0 joined, 3 refused (retrying will not
help), 4 unavailable (worth retrying); the reason is on stderr.

    python -m heimdall.api.join < request.json
"""
from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

REFUSED = 3
UNAVAILABLE = 4


def answer_as_dict(answer) -> dict:
    """The parts of a JoinResponse the joining node uses."""
    return {
        "subnet": answer.subnet,
        "master": {"node_id": answer.master.node_id, "address": answer.master.address},
        "nodes": [{"id": n.id, "name": n.name, "public_key": n.public_key, "endpoint": n.endpoint,
                   "subnet": n.subnet, "grpc_address": n.grpc_address, "joined_at": n.joined_at}
                  for n in answer.nodes],
    }


def main() -> int:
    from heimdall.api import client  # here, so heimdall-wg can import this module's constants without gRPC

    request = json.load(sys.stdin)
    tls = {k: Path(v) if k != "skip_verify" and v else v for k, v in request.pop("tls").items()}
    address, cluster_key = request.pop("address"), request.pop("cluster_key").encode()
    try:
        answer = asyncio.run(client.join(address, cluster_key, tls=client.TlsOptions(**tls), **request))
    except client.JoinRefused as exc:
        print(exc, file=sys.stderr)
        return REFUSED
    except client.ApiUnavailable as exc:
        print(exc, file=sys.stderr)
        return UNAVAILABLE
    json.dump(answer_as_dict(answer), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
