"""Applying the stream catalog to a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from message_bus import MessageType, NotFoundError, StreamCatalog, ValidationError
from message_bus.adapters.nats import NatsClient, NatsConfig, StreamError, StreamManager
from message_bus.app.embedded import EmbeddedNatsServer, NatsCluster

DAY = 24 * 3600.0


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = NatsClient(NatsConfig(urls=[nats_server.url]))
    await client.connect()
    yield client
    await client.close()


async def test_apply_creates_every_stream_of_the_catalog(client: NatsClient) -> None:
    catalog = StreamCatalog.default()

    reports = await StreamManager(client).apply(catalog, duplicate_window=90.0)

    assert [(r.name, r.action, r.drift) for r in reports] == [
        *((spec.name, "created", ()) for spec in catalog.all_streams()),
        ("KV_DELTRAN_ORDERED", "created", ()),  # the ordered groups' bucket
    ]
    info = await client.jetstream.stream_info("PAYMENT_INSTRUCTIONS")
    assert info.config.subjects == [
        "deltran.payment.instruction.>",
        "deltran.replay.PAYMENT_INSTRUCTIONS.>",  # dead letters replayed to one group
    ]
    assert info.config.retention == RetentionPolicy.LIMITS
    assert info.config.storage == StorageType.FILE
    assert info.config.max_age == 7 * DAY
    assert info.config.duplicate_window == 90.0
    assert info.config.num_replicas == 1
    dead = await client.jetstream.stream_info("DEAD_LETTERS")
    assert dead.config.subjects == ["deltran.dlq.>"]
    assert dead.config.max_age == 30 * DAY


async def test_applying_twice_changes_nothing(client: NatsClient) -> None:
    manager = StreamManager(client)
    await manager.apply()

    reports = await manager.apply()

    assert {r.action for r in reports} == {"unchanged"}


async def test_drifted_settings_are_corrected_and_reported(client: NatsClient) -> None:
    manager = StreamManager(client)
    await manager.apply()
    info = await client.jetstream.stream_info("SETTLEMENT_PROOFS")
    await client.jetstream.update_stream(info.config.evolve(max_age=DAY, duplicate_window=60.0))

    reports = {r.name: r for r in await manager.apply()}

    assert reports["SETTLEMENT_PROOFS"].action == "updated"
    assert reports["SETTLEMENT_PROOFS"].drift == (
        f"max_age: {DAY} -> {30 * DAY}",
        "duplicate_window: 60.0 -> 120.0",
    )
    assert reports["CHECKPOINTS"].action == "unchanged"
    fixed = await client.jetstream.stream_info("SETTLEMENT_PROOFS")
    assert (fixed.config.max_age, fixed.config.duplicate_window) == (30 * DAY, 120.0)


async def test_a_catalog_change_is_applied_to_the_existing_stream(client: NatsClient) -> None:
    manager = StreamManager(client)
    await manager.apply()
    shorter = StreamCatalog.default().with_max_age(MessageType.ADAPTER_TRANSFER, DAY)

    reports = {r.name: r for r in await manager.apply(shorter)}

    assert reports["ADAPTER_TRANSFERS"].action == "updated"
    info = await client.jetstream.stream_info("ADAPTER_TRANSFERS")
    assert info.config.max_age == DAY


async def test_a_setting_jetstream_cannot_change_is_reported_as_a_conflict(
    client: NatsClient,
) -> None:
    await client.jetstream.add_stream(
        StreamConfig(
            name="CHECKPOINTS",
            subjects=["deltran.consensus.checkpoint.>", "deltran.replay.CHECKPOINTS.>"],
            storage=StorageType.MEMORY,
            max_age=30 * DAY,
            duplicate_window=120.0,
        )
    )

    reports = {r.name: r for r in await StreamManager(client).apply()}

    assert reports["CHECKPOINTS"].action == "conflict"
    assert reports["CHECKPOINTS"].drift == ("storage: memory -> file",)
    info = await client.jetstream.stream_info("CHECKPOINTS")
    assert info.config.storage == StorageType.MEMORY


async def test_a_stream_whose_subjects_overlap_another_is_refused(client: NatsClient) -> None:
    await client.jetstream.add_stream(name="LEGACY", subjects=["deltran.payment.>"])

    with pytest.raises(StreamError) as caught:
        await StreamManager(client).apply()

    assert caught.value.stream == "PAYMENT_INSTRUCTIONS"
    assert "overlap" in caught.value.reason


async def test_more_replicas_than_servers_are_refused(client: NatsClient) -> None:
    with pytest.raises(StreamError):
        await StreamManager(client).apply(replicas=3)


async def test_bad_apply_settings_are_rejected_before_any_io(client: NatsClient) -> None:
    manager = StreamManager(client)

    with pytest.raises(ValidationError):
        await manager.apply(replicas=0)
    with pytest.raises(ValidationError):
        await manager.apply(duplicate_window=31 * DAY)
    assert await manager.list() == []


async def test_list_shows_what_exists(client: NatsClient) -> None:
    manager = StreamManager(client)
    await manager.apply()
    await client.jetstream.publish("deltran.netting.proposal.corridor.USD-EUR", b"{}")

    streams = {s.name: s for s in await manager.list()}

    assert sorted(streams) == sorted(
        [*(s.name for s in StreamCatalog.default().all_streams()), "KV_DELTRAN_ORDERED"]
    )
    netting = streams["NETTING_PROPOSALS"]
    assert (netting.messages, netting.first_sequence, netting.last_sequence) == (1, 1, 1)
    assert netting.subjects == ("deltran.netting.proposal.>", "deltran.replay.NETTING_PROPOSALS.>")
    assert (netting.storage, netting.retention, netting.replicas) == ("file", "limits", 1)
    assert (await manager.info("NETTING_PROPOSALS")) == netting
    with pytest.raises(NotFoundError, match=r"no stream .NOPE."):
        await manager.info("NOPE")


async def test_an_r3_catalog_applies_on_a_cluster(nats_cluster: NatsCluster) -> None:
    client = NatsClient(NatsConfig(urls=nats_cluster.urls))
    await client.connect()
    try:
        reports = await StreamManager(client).apply(replicas=3)
        info = await client.jetstream.stream_info("PAYMENT_INSTRUCTIONS")
    finally:
        await client.close()

    assert {r.action for r in reports} == {"created"}
    assert info.config.num_replicas == 3
    assert info.cluster is not None
    assert info.cluster.replicas is not None
    assert len(info.cluster.replicas) == 2
