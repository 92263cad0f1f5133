"""heimdall-elector (minimal): keeps the master record true on the node whose Redis is master.

The record (node id, tunnel address, epoch) is what every other daemon follows:
heimdall-store replicates from it, writers send to it. Failover is not decided
here yet; it is meant to come from a quorum engine (Redis Sentinel) that writes
this same record with a higher epoch, so no other daemon changes shape.
"""
from __future__ import annotations

import asyncio

from redis.exceptions import RedisError

from heimdall import cluster, identity
from heimdall.daemon import Daemon
from heimdall.state import MasterRecord
from heimdall.state.connect import StateLink


class ElectorAgent(Daemon):
    program = "heimdall-elector"

    async def start(self) -> None:
        c = self.config
        self.node_id = identity.host_id(c.data_dir, c.id)
        self.link = StateLink(c, cluster.load_cluster_key(c.cluster_key, c.cluster_key_file))

    def tasks(self):
        return [self._keep_record()]

    async def _keep_record(self) -> None:
        while True:
            self.progress()
            try:
                await self._check()
            except (RedisError, OSError) as exc:
                self.log.debug("cannot check the master record: %s", exc)
            await asyncio.sleep(self.config.heartbeat_interval)

    async def _check(self) -> None:
        role = (await self.link.local.info("replication"))["role"]
        if role != "master":
            self.status("replica: following the master record")
            return
        state = self.link.state
        own = await state.node(self.node_id)
        if own is None:
            return  # not a member yet
        current = await state.master()
        if current is None or (current.node_id == self.node_id and current.address != own.tunnel_address):
            epoch = (current.epoch if current else 0) + 1
            await state.set_master(MasterRecord(self.node_id, own.tunnel_address, epoch))
            self.log.info("master record set: %s at %s, epoch %d", self.node_id, own.tunnel_address, epoch)
        self.status(f"master record: {current.node_id if current else self.node_id}")

    async def shutdown(self) -> None:
        if hasattr(self, "link"):
            await self.link.close()
