"""heimdall-dns: the network's names on the node's tunnel address, answered from memory.

It waits until this node is a member (its membership file gives the tunnel
address) and the local Redis holds its record, then listens (retrying while
heimdall-wg has not put the address on the interface yet) and is ready. Every
snapshot of the local Redis rebuilds the zone and swaps it in whole, so a query
never waits on Redis and never sees half a change; while the local Redis is
away the last names keep being served. Other names go to the upstream
resolvers: ``dns-upstream-address``, else the host's /etc/resolv.conf as it was
before Heimdall touched it, never this server itself.
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress

from heimdall import cluster, identity
from heimdall.daemon import Daemon
from heimdall.dns import host as host_dns
from heimdall.dns.server import DnsServer
from heimdall.dns.zone import Zone, build_zone
from heimdall.settings import Config
from heimdall.state import Snapshot
from heimdall.state.connect import StateLink
from heimdall.state.feed import SnapshotFeed

DNS_PORT = 53
RETRY = 0.5  # seconds between checks for the membership file and the tunnel address


def split_host_port(text: str) -> tuple[str, int]:
    """ "IP:PORT" or "[v6]:PORT" (already validated by the settings table)."""
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def upstreams_from(resolv_conf: str, own: str) -> list[tuple[str, int]]:
    """The nameservers of a resolv.conf text, but this server's own address (no loops)."""
    found = []
    for server in host_dns.nameservers(resolv_conf):
        try:
            address = ipaddress.ip_address(server)
        except ValueError:
            continue
        if str(address) != own and not address.is_unspecified:
            found.append((str(address), DNS_PORT))
    return found


class DnsAgent(Daemon):
    program = "heimdall-dns"

    def __init__(self, config: Config, config_loader=None) -> None:
        super().__init__(config, config_loader)
        self.zone = Zone()
        self.link: StateLink | None = None
        self.feed: SnapshotFeed | None = None
        self.server: DnsServer | None = None
        self.resolver: host_dns.ResolvConf | host_dns.Resolved | None = None
        self._following: asyncio.Task | None = None

    async def start(self) -> None:
        c = self.config
        self.node_id = identity.host_id(c.data_dir, c.id)
        host, port = split_host_port(c.dns_address) if c.dns_address else (await self._tunnel_address(), DNS_PORT)
        self.link = StateLink(c, cluster.load_cluster_key(c.cluster_key, c.cluster_key_file))
        self.feed = SnapshotFeed(self.link.state, on_snapshot=self._rebuild, progress=self.progress)
        self._following = asyncio.ensure_future(self.feed.run())
        self.status("waiting for the local Redis to hold this node's record")
        await self.until(self.feed.wait_for(lambda s: self.node_id in s.nodes), self._following)
        if c.dns_resolve_names:
            self.resolver = host_dns.host_resolver(c.dns_resolver, c.interface_name, c.data_dir)
        upstreams = self._upstreams(host)
        self.server = DnsServer(self.zone, upstreams)
        await self._listen(host, port)
        self.log.info("answering %d names of %s on %s:%d (UDP and TCP); forwarding the rest to %s", self.zone.names,
                      c.domain, host, port, ", ".join(f"{h}:{p}" for h, p in upstreams) or "nowhere (SERVFAIL)")
        if self.resolver is not None:
            await self._install_names(host, port)

    async def _tunnel_address(self) -> str:
        while (membership := identity.Membership.load(self.config.data_dir)) is None:
            self.status("waiting for this node to become a member (heimdall-wg: bootstrap or join)")
            await asyncio.sleep(RETRY)
        return membership.tunnel_address

    def _upstreams(self, own: str) -> list[tuple[str, int]]:
        if self.config.dns_upstream_address:
            return [split_host_port(self.config.dns_upstream_address)]
        original = self.resolver.original() if self.resolver is not None else host_dns.RESOLV_CONF.read_text()
        return upstreams_from(original, own)

    async def _listen(self, host: str, port: int) -> None:
        while True:
            try:
                await self.server.start(host, port)
                return
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                self.status(f"waiting for {host} to be on an interface (heimdall-wg adds it)")
                await asyncio.sleep(RETRY)

    async def _install_names(self, host: str, port: int) -> None:
        if port != DNS_PORT:
            self.log.error("dns-resolve-names: a resolver can only use port 53, not %d; names not installed", port)
            self.resolver = None
            return
        try:
            await asyncio.to_thread(self.resolver.install, (host,), self.config.domain)
        except (OSError, host_dns.HostDnsError) as exc:
            self.log.error("dns-resolve-names: %s", exc)
            self.resolver = None

    def _rebuild(self, snapshot: Snapshot) -> None:
        self.zone = build_zone(snapshot, self.config.domain, self.config.dns_ttl)
        if self.server is not None:
            self.server.zone = self.zone
        self.log.debug("revision %d: %d names", snapshot.rev, self.zone.names)

    def tasks(self):
        return [self._following, self.server.maintain(self.progress)]

    async def reload(self, config: Config) -> None:
        """SIGHUP: a new domain or TTL applies at once; addresses and upstreams at the next start."""
        self.config = config
        if self.feed.latest is not None:
            self._rebuild(self.feed.latest)

    async def shutdown(self) -> None:
        if self.resolver is not None:
            try:
                await asyncio.to_thread(self.resolver.remove)
            except (OSError, host_dns.HostDnsError) as exc:
                self.log.error("dns-resolve-names: could not undo: %s", exc)
        if self.server is not None:
            await self.server.close()
        if self.feed is not None:
            self.feed.close()
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        if self.link is not None:
            await self.link.close()
