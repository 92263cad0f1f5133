"""heimdall-dns's UDP and TCP servers: the network's names from the in-memory zone, the rest forwarded.

Forwarding over UDP keeps no task per query: the query goes to the upstream
with a fresh random ID on one connected socket per upstream, and waits in a
table bounded by MAX_PENDING (a flood beyond it is answered SERVFAIL at once,
so memory stays flat). An upstream answer is relayed only when its ID and its
question match what was sent; the upstream's flags (TC included) and EDNS
records pass through untouched. A query unanswered after FORWARD_TIMEOUT, or
refused by the upstream's host (ICMP port unreachable on the connected socket),
is answered SERVFAIL, and later queries go to the next upstream. Over TCP a
query is forwarded over TCP, one connection each.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import struct
import time
from dataclasses import dataclass

from heimdall.dns import zone as z

log = logging.getLogger(__name__)

FORWARD_TIMEOUT = 2.0  # seconds an upstream gets to answer
MAX_PENDING = 2048  # forwarded UDP queries awaiting their answer
MAX_TCP_CLIENTS = 128  # open TCP connections; more are closed at once
TCP_IDLE = 10.0  # seconds a TCP client may stay silent
SWEEP = 0.1  # seconds between checks for forwarded queries that timed out
UDP_BURST = 64  # datagrams read per wake-up: one event-loop turn serves a burst, not one query
MAX_UDP_QUERY = 4096  # bytes read of one datagram (a query is a few dozen; more is truncated, then FORMERR)
_LENGTH = struct.Struct("!H")


@dataclass(slots=True)
class _Pending:
    query: z.Query
    client: tuple
    deadline: float
    upstream: _Upstream


class _Upstream(asyncio.DatagramProtocol):
    """One upstream resolver's connected UDP socket."""

    def __init__(self, forwarder: Forwarder, address: tuple[str, int]) -> None:
        self.forwarder = forwarder
        self.address = address
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.forwarder.answered(self, data)

    def error_received(self, exc: Exception) -> None:
        self.forwarder.failed(self, exc)


class Forwarder:
    """Relays UDP queries to the upstreams and their answers back through ``reply``."""

    def __init__(self, upstreams: list[tuple[str, int]], reply) -> None:
        self.upstreams = [_Upstream(self, address) for address in upstreams]
        self.reply = reply  # (packet, client address) -> None
        self.pending: dict[int, _Pending] = {}
        self.current = 0

    async def connect(self) -> None:
        """(Re)connect every upstream that has no socket (connecting a UDP socket fails without a route)."""
        loop = asyncio.get_running_loop()
        for upstream in self.upstreams:
            if upstream.transport is None:
                try:
                    await loop.create_datagram_endpoint(lambda u=upstream: u, remote_addr=upstream.address)
                except OSError as exc:
                    log.warning("upstream %s:%d unusable: %s", *upstream.address, exc)

    def forward(self, packet: bytes, query: z.Query, client: tuple) -> None:
        upstream = self.upstreams[self.current] if self.upstreams else None
        if upstream is None or upstream.transport is None or len(self.pending) >= MAX_PENDING:
            self.reply(z.rcode_response(query, z.SERVFAIL), client)
            return
        ident = secrets.randbits(16)
        while ident in self.pending:
            ident = secrets.randbits(16)
        self.pending[ident] = _Pending(query, client, time.monotonic() + FORWARD_TIMEOUT, upstream)
        upstream.transport.sendto(z.replace_id(packet, ident))

    def answered(self, upstream: _Upstream, packet: bytes) -> None:
        if len(packet) < 12:
            return
        ident = _LENGTH.unpack_from(packet)[0]
        pending = self.pending.get(ident)
        if pending is None or pending.upstream is not upstream or \
                packet[12:12 + len(pending.query.question)].lower() != pending.query.question.lower():
            return  # late, or not an answer to what we asked
        del self.pending[ident]
        self.reply(z.replace_id(packet, pending.query.id), pending.client)

    def failed(self, upstream: _Upstream, exc: Exception) -> None:
        """The upstream's host refused a query (nothing listens there): fail its queries now."""
        log.debug("upstream %s:%d: %s", *upstream.address, exc)
        self._give_up(lambda p: p.upstream is upstream)

    def sweep(self) -> None:
        now = time.monotonic()
        oldest = next(iter(self.pending.values()), None)  # the table is in sending order: deadline order
        if oldest is not None and oldest.deadline <= now:
            self._give_up(lambda p: p.deadline <= now)

    def _give_up(self, which) -> None:
        failed = [ident for ident, p in self.pending.items() if which(p)]
        upstreams = set()
        for ident in failed:
            pending = self.pending.pop(ident)
            upstreams.add(pending.upstream.address)
            self.reply(z.rcode_response(pending.query, z.SERVFAIL), pending.client)
        if self.upstreams and self.upstreams[self.current].address in upstreams:
            self.current = (self.current + 1) % len(self.upstreams)
            log.warning("upstream %s:%d failed %d queries; forwarding to %s:%d next", *next(iter(upstreams)),
                        len(failed), *self.upstreams[self.current].address)

    def close(self) -> None:
        for upstream in self.upstreams:
            if upstream.transport is not None:
                upstream.transport.close()


class DnsServer:
    """Answers from ``zone`` (replace it at will: each query reads the current one), forwards the rest."""

    def __init__(self, zone: z.Zone, upstreams: list[tuple[str, int]]) -> None:
        self.zone = zone
        self.upstreams = upstreams
        self.forwarder = Forwarder(upstreams, self._send)
        self._udp: socket.socket | None = None
        self._tcp: asyncio.Server | None = None
        self._tcp_clients: set[asyncio.Task] = set()

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host``:``port``, UDP and TCP (OSError when the address is not there yet)."""
        loop = asyncio.get_running_loop()
        # A plain non-blocking socket read by _drain, not a DatagramTransport: asyncio's transport reads one
        # datagram per event-loop turn, which is most of the cost of an answer from memory.
        udp = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.setblocking(False)
            udp.bind((host, port))
            self._tcp = await asyncio.start_server(self._tcp_client, host, port, reuse_address=True)
        except OSError:
            udp.close()
            raise
        self._udp = udp
        loop.add_reader(udp.fileno(), self._drain)
        await self.forwarder.connect()

    def _drain(self) -> None:
        """Answer every datagram waiting (up to a burst), then let the loop run other work."""
        for _ in range(UDP_BURST):
            try:
                data, client = self._udp.recvfrom(MAX_UDP_QUERY)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. an ICMP unreachable from a client that went away
                log.debug("UDP: %s", exc)
                continue
            self.udp_query(data, client)

    async def maintain(self, progress=lambda: None) -> None:
        """Time out forwarded queries, reconnect lost upstreams; runs until cancelled."""
        ticks = 0
        while True:
            await asyncio.sleep(SWEEP)
            self.forwarder.sweep()
            ticks += 1
            if ticks % 10 == 0:
                await self.forwarder.connect()
                progress()

    def _send(self, packet: bytes, client: tuple) -> None:
        """Send one answer; dropped if the socket buffer is full (the client asks again, as over UDP it must)."""
        if self._udp is None:
            return
        try:
            self._udp.sendto(packet, client)
        except (BlockingIOError, InterruptedError):
            log.debug("UDP send buffer full: an answer to %s dropped", client)
        except OSError as exc:
            log.debug("UDP answer to %s: %s", client, exc)

    def udp_query(self, data: bytes, client: tuple) -> None:
        try:
            query = z.parse_query(data)
        except z.Malformed:
            reply = z.error_response(data, z.FORMERR)
        except z.Unsupported:
            reply = z.error_response(data, z.NOTIMP)
        else:
            prepared = self.zone.lookup(query)
            if prepared is None:
                self.forwarder.forward(data, query, client)
                return
            reply = z.respond(query, prepared, z.udp_limit(query))
        if reply is not None:
            self._send(reply, client)

    async def _tcp_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._tcp_clients) >= MAX_TCP_CLIENTS:
            writer.close()
            return
        task = asyncio.current_task()
        self._tcp_clients.add(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    (length,) = _LENGTH.unpack(await reader.readexactly(2))
                    data = await reader.readexactly(length)
                reply = await self._tcp_answer(data)
                if reply is None:
                    break
                writer.write(_LENGTH.pack(len(reply)) + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            self._tcp_clients.discard(task)
            writer.close()

    async def _tcp_answer(self, data: bytes) -> bytes | None:
        try:
            query = z.parse_query(data)
        except z.Malformed:
            return z.error_response(data, z.FORMERR)
        except z.Unsupported:
            return z.error_response(data, z.NOTIMP)
        prepared = self.zone.lookup(query)
        if prepared is not None:
            return z.respond(query, prepared, None)
        upstream = self.upstreams[self.forwarder.current] if self.upstreams else None
        try:
            if upstream is None:
                raise OSError("no upstream resolver")
            async with asyncio.timeout(FORWARD_TIMEOUT):
                return await _ask_over_tcp(upstream, data, query)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("forwarding over TCP failed: %s", exc)
            return z.rcode_response(query, z.SERVFAIL)

    async def close(self) -> None:
        if self._udp is not None:
            asyncio.get_running_loop().remove_reader(self._udp.fileno())
            self._udp.close()
            self._udp = None
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tcp_clients):
            task.cancel()
        await asyncio.gather(*self._tcp_clients, return_exceptions=True)
        self.forwarder.close()


async def _ask_over_tcp(upstream: tuple[str, int], data: bytes, query: z.Query) -> bytes:
    reader, writer = await asyncio.open_connection(*upstream)
    try:
        writer.write(_LENGTH.pack(len(data)) + data)
        await writer.drain()
        (length,) = _LENGTH.unpack(await reader.readexactly(2))
        answer = await reader.readexactly(length)
    finally:
        writer.close()
    if length < 12 or answer[:2] != data[:2] or answer[12:12 + len(query.question)].lower() != query.question.lower():
        raise ValueError("the upstream's answer does not match the query")
    return answer
