"""The API's keepalive policy, both ends, on loopback: a quiet stream lives, a silent node is noticed.

A peer's Watch stream carries nothing between changes. The client's HTTP/2 pings
(client.CHANNEL_OPTIONS) must tell a node that went silent within seconds, and
the node's policy (server.SERVER_OPTIONS) must accept those pings on a quiet
stream for as long as it lasts, not answer GOAWAY too_many_pings. The lab test
of the whole thing is in test_peer_resilience.py.
"""
import asyncio
import time

import grpc
import pytest

from heimdall.api import client, server

pytestmark = pytest.mark.integration

QUIET = 10.0  # seconds: 4 pings and more; a node refusing the rate ends the stream after the third
NOTICE_DEADLINE = 10.0  # generous: expected within client.KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS


async def _quiet(request, context):
    yield b"hello"
    await asyncio.sleep(3600)


async def _serve() -> tuple[grpc.aio.Server, int]:
    node = grpc.aio.server(options=server.SERVER_OPTIONS)
    node.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "test.Quiet", {"Watch": grpc.unary_stream_rpc_method_handler(_quiet)}),))
    port = node.add_insecure_port("127.0.0.1:0")
    await node.start()
    return node, port


class Blackhole:
    """A TCP relay to ``port`` that, once frozen, forwards nothing more and closes nothing: the node
    behind it is gone without a FIN or an RST (TCP itself still acknowledges, as a partition would not)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.frozen = asyncio.Event()
        self.listener: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.listener = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return self.listener.sockets[0].getsockname()[1]

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.port)
        self.writers += [writer, upstream_writer]
        await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self.frozen.is_set():
                await asyncio.Event().wait()  # hold the connection open, silently, until cancelled
            writer.write(data)
            await writer.drain()

    def close(self) -> None:
        self.listener.close()
        for writer in self.writers:
            writer.transport.abort()


async def _watch(channel: grpc.aio.Channel) -> grpc.aio.UnaryStreamCall:
    call = channel.unary_stream("/test.Quiet/Watch")(b"")
    assert await call.read() == b"hello"
    return call


def test_a_quiet_stream_outlives_many_keepalive_pings():
    async def run():
        node, port = await _serve()
        try:
            async with client.dial(f"tcp://127.0.0.1:{port}") as channel:
                call = await _watch(channel)
                with pytest.raises(asyncio.TimeoutError):  # not AioRpcError: UNAVAILABLE (too_many_pings)
                    await asyncio.wait_for(call.read(), QUIET)
        finally:
            await node.stop(None)

    asyncio.run(run())


def test_a_node_gone_silent_is_noticed_within_seconds():
    async def run() -> float:
        node, port = await _serve()
        relay = Blackhole(port)
        try:
            async with client.dial(f"tcp://127.0.0.1:{await relay.start()}") as channel:
                call = await _watch(channel)
                await asyncio.sleep(3)  # some pings answered: the stream is healthy until it is not
                relay.frozen.set()
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as failed:
                    await asyncio.wait_for(call.read(), NOTICE_DEADLINE)
                assert failed.value.code() == grpc.StatusCode.UNAVAILABLE, failed.value
                return time.monotonic() - started
        finally:
            relay.close()
            await node.stop(None)

    print(f"silent node noticed after {asyncio.run(run()):.2f} s")
