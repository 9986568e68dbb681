"""Stream limits on real nats-server: apply creates and corrects them, a full stream refuses."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from message_bus.adapters.nats import (
    JetStreamPublisher,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.config import load_settings
from message_bus.app.containers import apply_streams, open_container, resolve
from message_bus.app.embedded import EmbeddedNatsServer, NatsCluster
from message_bus.domain.catalog import MessageType, StreamCatalog, StreamLimits
from message_bus.domain.errors import PublishError
from message_bus.domain.message import Message
from message_bus.domain.partition import PartitionKey
from message_bus.ports.config import PublisherConfig
from message_bus.testing.samples import sample_payload

PI = MessageType.PAYMENT_INSTRUCTION
KEY = PartitionKey.corridor(corridor_id="USD-EUR")
AT_ONCE = 2.0
"""Seconds within which a refused publish fails (the publish timeout is 5 s)."""


def _message(n: int, **changes: object) -> Message:
    payload = sample_payload(PI, payment_id=f"pay_{n:05d}", **changes)
    return Message.new(PI, KEY, payload)


def _payments(limits: StreamLimits) -> StreamCatalog:
    return StreamCatalog.default().with_limits(None, {"PAYMENT_INSTRUCTIONS": limits})


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = NatsClient(NatsConfig(urls=[nats_server.url]))
    await client.connect()
    yield client
    await client.close()


async def _refused_at_once(publisher: JetStreamPublisher, message: Message) -> PublishError:
    loop = asyncio.get_running_loop()
    began = loop.time()
    with pytest.raises(PublishError) as caught:
        await publisher.publish(message)
    took = loop.time() - began
    assert took < AT_ONCE, f"the refusal of {message.id} took {took:.2f}s: it was retried"
    return caught.value


async def test_apply_creates_the_limits_and_reports_and_corrects_their_drift(
    client: NatsClient,
) -> None:
    manager = StreamManager(client)
    reports = await manager.apply(_payments(StreamLimits(max_msgs=100, max_msg_size=4096)))
    assert {r.name: r.action for r in reports}["PAYMENT_INSTRUCTIONS"] == "created"
    info = await manager.info("PAYMENT_INSTRUCTIONS")
    assert (info.max_msgs, info.max_bytes, info.max_msg_size) == (100, -1, 4096)
    assert info.discard == "new"
    again = await manager.apply(_payments(StreamLimits(max_msgs=100, max_msg_size=4096)))
    assert all(r.action == "unchanged" for r in again), again

    changed = _payments(StreamLimits(max_msgs=50, max_bytes=1_000_000, discard="old"))
    report = next(r for r in await manager.apply(changed) if r.name == "PAYMENT_INSTRUCTIONS")
    assert report.action == "updated"
    assert set(report.drift) == {
        "discard: new -> old",
        "max_msgs: 100 -> 50",
        "max_bytes: -1 -> 1000000",
        "max_msg_size: 4096 -> -1",
    }
    info = await manager.info("PAYMENT_INSTRUCTIONS")
    assert (info.max_msgs, info.max_bytes, info.max_msg_size) == (50, 1_000_000, -1)
    assert info.discard == "old"

    in_memory = _payments(StreamLimits(storage="memory"))
    report = next(r for r in await manager.apply(in_memory) if r.name == "PAYMENT_INSTRUCTIONS")
    assert report.action == "conflict"  # JetStream cannot move a stream to memory storage
    assert "storage: file -> memory" in report.drift


async def test_a_full_payments_stream_refuses_with_stream_full_and_drops_nothing(
    client: NatsClient,
) -> None:
    manager = StreamManager(client)
    await manager.apply(_payments(StreamLimits(max_msgs=3)))
    publisher = JetStreamPublisher(client, PublisherConfig(circuit_breaker_threshold=2))
    kept = [await publisher.publish(_message(n)) for n in range(3)]
    for n in range(3, 8):  # more refusals than the breaker's threshold
        error = await _refused_at_once(publisher, _message(n))
        assert error.reason == "stream_full"
        assert not error.retryable
        assert "maximum messages exceeded" in error.detail
    assert publisher.breaker.clean, "a full stream tripped the circuit breaker"
    other = Message.new(
        MessageType.NETTING_PROPOSAL, KEY, sample_payload(MessageType.NETTING_PROPOSAL)
    )
    assert (await publisher.publish(other)).sequence == 1
    info = await manager.info("PAYMENT_INSTRUCTIONS")
    assert (info.messages, info.first_sequence, info.last_sequence) == (3, 1, 3)
    assert [r.sequence for r in kept] == [1, 2, 3]
    await publisher.close()


async def test_full_by_bytes_refuses_and_an_oversized_message_is_too_large(
    client: NatsClient,
) -> None:
    manager = StreamManager(client)
    await manager.apply(_payments(StreamLimits(max_bytes=4000, max_msg_size=2000)))
    publisher = JetStreamPublisher(client, PublisherConfig())
    too_large = await _refused_at_once(publisher, _message(0, reference="x" * 2500))
    assert too_large.reason == "message_too_large"
    stored, refusal = 0, None
    for n in range(1, 100):
        try:
            await publisher.publish(_message(n))
        except PublishError as exc:
            refusal = exc
            break
        stored += 1
    assert refusal is not None, "99 payments fit in 4000 bytes"
    assert refusal.reason == "stream_full", refusal
    info = await manager.info("PAYMENT_INSTRUCTIONS")
    assert info.messages == stored
    assert info.first_sequence == 1
    await publisher.close()


async def test_discard_old_keeps_the_newest(client: NatsClient) -> None:
    manager = StreamManager(client)
    await manager.apply(_payments(StreamLimits(max_msgs=3, discard="old")))
    publisher = JetStreamPublisher(client, PublisherConfig())
    for n in range(5):
        await publisher.publish(_message(n))
    info = await manager.info("PAYMENT_INSTRUCTIONS")
    assert (info.messages, info.first_sequence, info.last_sequence) == (3, 3, 5)
    await publisher.close()


async def test_a_full_r3_stream_refuses_on_a_cluster_too(nats_cluster: NatsCluster) -> None:
    async with NatsClient(NatsConfig(urls=nats_cluster.urls, connection_timeout=5.0)) as client:
        manager = StreamManager(client)
        await manager.apply(_payments(StreamLimits(max_msgs=2)), replicas=3)
        publisher = JetStreamPublisher(client, PublisherConfig(publish_timeout=10.0))
        try:
            for n in range(2):
                await publisher.publish(_message(n))
            error = await _refused_at_once(publisher, _message(2))
            assert error.reason == "stream_full"
            info = await manager.info("PAYMENT_INSTRUCTIONS")
            assert (info.messages, info.replicas) == (2, 3)
        finally:
            await publisher.close()


async def test_a_server_out_of_jetstream_storage_refuses_with_stream_full_at_once(
    nats_server_factory: Callable[..., EmbeddedNatsServer], tmp_path: Path
) -> None:
    config = tmp_path / "small.conf"
    config.write_text("jetstream { max_file_store: 64KB, sync_interval: always }\n")
    server = nats_server_factory(config_file=config)
    client = NatsClient(NatsConfig(urls=[server.url]))
    await client.connect()
    manager = StreamManager(client)
    await manager.apply(StreamCatalog.default())  # no stream limits: the server's store fills
    publisher = JetStreamPublisher(client, PublisherConfig(circuit_breaker_threshold=2))
    refusal = None
    for n in range(1000):
        message = _message(n, reference="x" * 1000)
        try:
            await publisher.publish(message)
        except PublishError:
            refusal = await _refused_at_once(publisher, _message(n + 1, reference="x" * 1000))
            break
    assert refusal is not None, "1000 kB fit in a 64 kB JetStream store"
    assert refusal.reason == "stream_full", refusal
    assert "insufficient resources" in refusal.detail
    assert publisher.breaker.clean, "a full store tripped the circuit breaker"
    await publisher.close()
    await client.close()


async def test_the_settings_limits_are_applied_and_enforced_on_nats(
    nats_server: EmbeddedNatsServer, tmp_path: Path
) -> None:
    path = tmp_path / "bus.toml"
    path.write_text(
        f'[nats]\nurls = ["{nats_server.url}"]\n'
        "[streams]\nmax_msg_size = 65536\n"
        "[streams.limits.PAYMENT_INSTRUCTIONS]\nmax_msgs = 2\n"
    )
    settings = load_settings(path, environ={})
    async with open_container(settings) as container:
        reports = await apply_streams(container)
        assert {r.name: r.action for r in reports}["PAYMENT_INSTRUCTIONS"] == "created"
        manager = await resolve(container.stream_manager())
        summaries = {s.name: s for s in await manager.list()}
        payments = summaries["PAYMENT_INSTRUCTIONS"]
        assert (payments.max_msgs, payments.max_msg_size, payments.discard) == (2, 65536, "new")
        netting = summaries["NETTING_PROPOSALS"]
        assert (netting.max_msgs, netting.max_msg_size, netting.discard) == (-1, 65536, "old")
        publisher = await container.publisher()
        await publisher.publish(_message(0))
        await publisher.publish(_message(1))
        with pytest.raises(PublishError) as caught:
            await publisher.publish(_message(2))
        assert caught.value.reason == "stream_full"
