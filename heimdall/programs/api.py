"""heimdall-api: the node's gRPC API (joins, peers, routes, status) for nodes, peers and hctl.

It starts serving only once this node is a member: its node record is in the
local Redis (heimdall-wg writes it when bootstrapping, or it replicates in after
a join), because answering joins and peers needs the cluster's state. Writes go
to the master named in the state and follow it when it changes; the local
snapshot feed drives the peers' Watch streams and keeps reads answering while
the local Redis is away.
"""
from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from heimdall import cluster, identity
from heimdall.state.feed import SnapshotFeed
from heimdall.api.server import ApiServer, HeimdallService
from heimdall.daemon import Daemon, run_program
from heimdall.settings import Config
from heimdall.state import Snapshot, StateError
from heimdall.state.connect import StateLink

STOP_GRACE = 5.0  # seconds running calls get to finish on SIGTERM
RETRY = 1.0


class ApiDaemon(Daemon):
    program = "heimdall-api"

    def __init__(self, config: Config, config_loader=None) -> None:
        super().__init__(config, config_loader)
        self.link: StateLink | None = None
        self.feed: SnapshotFeed | None = None
        self.server: ApiServer | None = None
        self._following: asyncio.Task | None = None

    async def start(self) -> None:
        c = self.config
        cluster_key = cluster.load_cluster_key(c.cluster_key, c.cluster_key_file)
        self.node_id = identity.host_id(c.data_dir, c.id)
        self.link = StateLink(c, cluster_key)
        self.feed = SnapshotFeed(self.link.state, on_snapshot=self._follow_master, progress=self.progress)
        self._following = asyncio.ensure_future(self.feed.run())
        self.status("waiting for the local Redis to hold this node's record (heimdall-wg: bootstrap or join)")
        await self.until(self.feed.wait_for(lambda s: self.node_id in s.nodes), self._following)
        self.service = HeimdallService(c, cluster_key, self.node_id, self.link, self.feed)
        await self._authorize_configured(c.authorized_peer)
        self.server = ApiServer.from_config(self.service, c)
        await self.server.start()
        self.log.info("node %s: serving on tcp://%s%s", self.node_id, self.server.address,
                      f" and {c.operator_socket}" if c.operator_socket else "")

    def _follow_master(self, snapshot: Snapshot) -> None:
        self.link.follow(snapshot.master, self.node_id)

    async def _authorize_configured(self, peer_ids: list[str]) -> None:
        """Authorize the ``authorized-peer`` IDs (one already authorized keeps its key); retried until the
        master answers."""
        for peer_id in peer_ids:
            while True:
                try:
                    await self.service.authorize_peer(peer_id)
                    break
                except (RedisError, StateError) as exc:
                    self.status(f"waiting for the master to authorize configured peer {peer_id}")
                    self.log.warning("cannot authorize configured peer %s yet: %s", peer_id, exc)
                    await asyncio.sleep(RETRY)

    def tasks(self):
        return [self._following]

    async def reload(self, config: Config) -> None:
        """SIGHUP: authorize newly configured peers; other settings take effect at the next start."""
        self.config = config
        await self._authorize_configured(config.authorized_peer)

    async def shutdown(self) -> None:
        if self.feed is not None:
            self.feed.close()  # Watch streams end now: their peers move to another node at once
        if self.server is not None:
            await self.server.stop(STOP_GRACE)
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        if self.link is not None:
            await self.link.close()


def main(argv: list[str] | None = None) -> int:
    return run_program("heimdall-api", ApiDaemon, argv)
