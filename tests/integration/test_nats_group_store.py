"""The ordered groups' store on real nats-server processes: compare-and-set on the
``DELTRAN_ORDERED`` KV bucket, snapshots, members that leave or are forgotten, racing
joins, an unreachable server, and the bucket that ``streams apply`` creates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from proxy import TcpProxy
from servers import connect
from waits import eventually

from message_bus.adapters.nats import KvGroupStore, NatsClient, NatsConfig, StreamManager
from message_bus.adapters.ordered.store import (
    BUCKET,
    GroupSpec,
    MemberRecord,
    PartitionRecord,
    StoreConflict,
    StoreUnavailable,
)
from message_bus.app.embedded import EmbeddedNatsServer, NatsCluster
from message_bus.domain.errors import ValidationError

STREAM = "PAYMENT_INSTRUCTIONS"
GROUP = "settlement"
SPEC = GroupSpec(partitions=32, generation="2026-11-29T10:00:00Z")


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    yield client
    await client.close()


def store(client: NatsClient, consumer: str = GROUP, **options: float) -> KvGroupStore:
    return KvGroupStore(client, STREAM, consumer, **options)  # type: ignore[arg-type]


async def test_a_partition_record_is_created_once_then_updated_by_compare_and_set(
    client: NatsClient,
) -> None:
    kv = store(client)
    first = await kv.write_partition(3, PartitionRecord(owner="m1", generation="g"), 0)

    with pytest.raises(StoreConflict):
        await kv.write_partition(3, PartitionRecord(owner="m2", generation="g"), 0)
    second = await kv.write_partition(3, PartitionRecord(owner="m1", floor=7), first)
    with pytest.raises(StoreConflict):
        await kv.write_partition(3, PartitionRecord(owner="m2", floor=9), first)

    assert second > first
    snapshot = await kv.snapshot()
    assert snapshot.partitions[3].revision == second
    assert snapshot.partitions[3].value == PartitionRecord(owner="m1", floor=7)


async def test_the_snapshot_holds_every_member_and_partition_with_its_revision(
    client: NatsClient,
) -> None:
    kv = store(client)
    other_group = store(client, "other")
    await kv.join(SPEC)
    a = await kv.heartbeat("m-a", MemberRecord(started="2026-11-29T10:00:00Z"))
    b = await kv.heartbeat("m-b", MemberRecord(started="2026-11-29T10:00:01Z"))
    p0 = await kv.write_partition(0, PartitionRecord(owner="m-a"), 0)
    p31 = await kv.write_partition(31, PartitionRecord(owner="m-b", floor=5), 0)
    await other_group.heartbeat("m-z", MemberRecord(started="2026-11-29T10:00:02Z"))
    await other_group.write_partition(1, PartitionRecord(owner="m-z"), 0)
    a2 = await kv.heartbeat("m-a", MemberRecord(started="2026-11-29T10:00:00Z", beats=1))

    snapshot = await kv.snapshot()

    assert snapshot.members == {"m-a": a2, "m-b": b}
    assert a2 > a
    assert {p: v.revision for p, v in snapshot.partitions.items()} == {0: p0, 31: p31}
    assert snapshot.partitions[31].value.floor == 5
    assert (await store(client, "nobody").snapshot()).members == {}


async def test_a_snapshot_of_more_keys_than_one_batch_reads_them_all(client: NatsClient) -> None:
    kv = store(client)
    await kv.join(GroupSpec(partitions=1500, generation="g"))
    revisions = await asyncio.gather(
        *(kv.write_partition(p, PartitionRecord(floor=p), 0) for p in range(1500))
    )
    member = await kv.heartbeat("m-a", MemberRecord(started="t"))

    snapshot = await kv.snapshot()

    assert snapshot.members == {"m-a": member}
    assert {p: v.revision for p, v in snapshot.partitions.items()} == dict(enumerate(revisions))
    assert all(v.value.floor == p for p, v in snapshot.partitions.items())


async def test_forget_at_a_stale_revision_keeps_the_member_and_leave_removes_it(
    client: NatsClient,
) -> None:
    kv = store(client)
    old = await kv.heartbeat("m-a", MemberRecord(started="t"))
    new = await kv.heartbeat("m-a", MemberRecord(started="t", beats=1))
    dead = await kv.heartbeat("m-b", MemberRecord(started="t"))

    await kv.forget("m-a", old)  # it beat since: still alive
    await kv.forget("m-b", dead)

    assert (await kv.snapshot()).members == {"m-a": new}
    await kv.leave("m-a")
    assert (await kv.snapshot()).members == {}
    info = await client.jetstream.stream_info(
        f"KV_{BUCKET}", subjects_filter=f"$KV.{BUCKET}.{STREAM}.{GROUP}.member.>"
    )
    assert not info.state.subjects  # no delete marker left behind
    again = await kv.heartbeat("m-a", MemberRecord(started="t2"))  # rejoins
    assert (await kv.snapshot()).members == {"m-a": again}


async def test_two_stores_racing_to_join_agree_on_the_spec(nats_server: EmbeddedNatsServer) -> None:
    clients = [await connect(nats_server.url) for _ in range(4)]
    try:
        specs = [GroupSpec(partitions=8 * (i + 1), generation="g") for i in range(4)]
        joined = await asyncio.gather(
            *(store(c).join(s) for c, s in zip(clients, specs, strict=True))
        )
    finally:
        for c in clients:
            await c.close()

    assert len({(v.value, v.revision) for v in joined}) == 1
    assert joined[0].value in specs


async def test_join_returns_the_stored_spec_and_replace_spec_is_compare_and_set(
    client: NatsClient,
) -> None:
    kv = store(client)
    first = await kv.join(SPEC)
    again = await kv.join(GroupSpec(partitions=64, generation="other"))
    assert again == first

    renewed = GroupSpec(partitions=32, generation="2026-11-30T00:00:00Z")
    revision = await kv.replace_spec(renewed, first.revision)
    with pytest.raises(StoreConflict):
        await kv.replace_spec(SPEC, first.revision)
    assert (await kv.join(SPEC)).revision == revision


async def test_a_deleted_key_counts_as_absent(client: NatsClient) -> None:
    """An operator's ``nats kv del`` leaves a delete marker: creating the key again works."""
    kv = store(client)
    revision = await kv.write_partition(2, PartitionRecord(owner="m1", floor=9), 0)
    await client.connection.request(
        f"$KV.{BUCKET}.{STREAM}.{GROUP}.partition.2", b"", headers={"KV-Operation": "DEL"}
    )
    assert 2 not in (await kv.snapshot()).partitions

    recreated = await kv.write_partition(2, PartitionRecord(owner="m2"), 0)

    assert recreated > revision
    assert (await kv.snapshot()).partitions[2].value.owner == "m2"


async def test_the_store_is_unavailable_while_the_server_is_cut_off(
    nats_server: EmbeddedNatsServer,
) -> None:
    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        client = NatsClient(
            NatsConfig(urls=[proxy.url], reconnect_delay=0.05, reconnect_max_delay=0.2)
        )
        await client.connect()
        try:
            kv = store(client, timeout=1.0)
            revision = await kv.heartbeat("m-a", MemberRecord(started="t"))
            proxy.refuse(True)
            proxy.cut()
            with pytest.raises(StoreUnavailable):
                await kv.heartbeat("m-a", MemberRecord(started="t", beats=1))
            with pytest.raises(StoreUnavailable):
                await kv.snapshot()
            with pytest.raises(StoreUnavailable):
                await kv.write_partition(0, PartitionRecord(), 0)
            proxy.refuse(False)
            assert await client.wait_connected(30.0), "the client to reconnect"
            assert (await kv.snapshot()).members == {"m-a": revision}
        finally:
            await client.close()


async def test_the_store_is_unavailable_when_the_server_is_stopped(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url)
    try:
        kv = store(client, timeout=1.0)
        await kv.join(SPEC)
        nats_server.stop()
        with pytest.raises(StoreUnavailable):
            await kv.snapshot()
        with pytest.raises(StoreUnavailable):
            await kv.join(SPEC)
    finally:
        await client.close()


async def test_the_store_recovers_when_the_bucket_was_deleted(client: NatsClient) -> None:
    kv = store(client)
    await kv.write_partition(0, PartitionRecord(owner="m1", floor=50), 0)
    await kv.heartbeat("m1", MemberRecord(started="t"))
    await client.jetstream.delete_stream(f"KV_{BUCKET}")

    async def written() -> bool:
        try:
            await kv.write_partition(0, PartitionRecord(owner="m2"), 0)
        except StoreUnavailable:
            return False
        return True

    await eventually(written, "a write to the bucket created again")
    snapshot = await kv.snapshot()
    assert snapshot.members == {}
    assert snapshot.partitions[0].value.owner == "m2"


async def test_bad_arguments_are_refused_before_any_io(client: NatsClient) -> None:
    with pytest.raises(ValidationError, match="consumer"):
        KvGroupStore(client, STREAM, "a.b")
    with pytest.raises(ValidationError, match="replicas"):
        KvGroupStore(client, STREAM, GROUP, replicas=0)
    kv = store(client)
    with pytest.raises(ValidationError, match="member"):
        await kv.heartbeat("x>", MemberRecord(started="t"))
    with pytest.raises(ValidationError, match="revision"):
        await kv.write_partition(0, PartitionRecord(), -1)
    with pytest.raises(ValidationError, match="partition"):
        await kv.write_partition(-1, PartitionRecord(), 0)


async def test_apply_creates_the_bucket_idempotently(client: NatsClient) -> None:
    manager = StreamManager(client)

    first = {r.name: r.action for r in await manager.apply()}
    second = {r.name: r.action for r in await manager.apply()}

    assert first[f"KV_{BUCKET}"] == "created"
    assert second[f"KV_{BUCKET}"] == "unchanged"
    info = await client.jetstream.stream_info(f"KV_{BUCKET}")
    assert info.config.max_msgs_per_subject == 1
    assert info.config.allow_direct
    assert info.config.num_replicas == 1
    await store(client).join(SPEC)  # the store uses the bucket apply made


async def test_apply_on_a_cluster_gives_the_bucket_the_streams_replicas(
    nats_cluster: NatsCluster,
) -> None:
    client = NatsClient(NatsConfig(urls=nats_cluster.urls, api_timeout=20.0))
    await client.connect()
    try:
        await StreamManager(client).apply(replicas=3)
        info = await client.jetstream.stream_info(f"KV_{BUCKET}")
        kv = store(client, timeout=20.0)
        joined = await kv.join(SPEC)
        revision = await kv.write_partition(1, PartitionRecord(owner="m"), 0)
        snapshot = await kv.snapshot()
    finally:
        await client.close()

    assert info.config.num_replicas == 3
    assert joined.value == SPEC
    assert snapshot.partitions[1].revision == revision
