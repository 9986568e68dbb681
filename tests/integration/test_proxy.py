"""The fault-injecting TCP proxy the failure tests rely on does what it says."""

from __future__ import annotations

import asyncio

import nats
import pytest
from proxy import TcpProxy

from message_bus.app.embedded import EmbeddedNatsServer


async def test_forwards_records_and_cuts(nats_server: EmbeddedNatsServer) -> None:
    disconnected = asyncio.Event()

    async def on_disconnect() -> None:
        disconnected.set()

    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        nc = await nats.connect(proxy.url, disconnected_cb=on_disconnect, max_reconnect_attempts=0)
        try:
            sub = await nc.subscribe("proxy.test")
            await nc.publish("proxy.test", b"through")
            msg = await sub.next_msg(timeout=5)
            assert msg.data == b"through"
            assert b"PUB proxy.test" in proxy.seen_upstream
            assert proxy.open_connections == 1
            proxy.cut()
            await asyncio.wait_for(disconnected.wait(), 10)
        finally:
            await nc.close()


async def test_drop_black_holes_one_direction(nats_server: EmbeddedNatsServer) -> None:
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        nc = await nats.connect(proxy.url, max_reconnect_attempts=0)
        try:
            proxy.drop(downstream=True)
            with pytest.raises(asyncio.TimeoutError):
                await nc.flush(timeout=0.5)
            proxy.heal()
        finally:
            await nc.close()


async def test_refuse_closes_new_connections(nats_server: EmbeddedNatsServer) -> None:
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        proxy.refuse()
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b"", "the proxy sent data"
        finally:
            writer.close()
            await writer.wait_closed()
        proxy.refuse(False)
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            info = await asyncio.wait_for(reader.readline(), 5)
            assert info.startswith(b"INFO "), info
        finally:
            writer.close()
            await writer.wait_closed()
