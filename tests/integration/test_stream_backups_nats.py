"""Stream backups and restores on a real nats-server: every message and every consumer
group's position survive a backup, a deleted stream and a restore; a corrupted snapshot
and an existing stream are refused."""

from __future__ import annotations

import io
import json
import os
import re
import time
from pathlib import Path

import nats.errors
import pytest
from waits import eventually

from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.adapters.nats.snapshots import (
    SnapshotManifest,
    StreamSnapshots,
    manifest_path,
    snapshot_path,
)
from message_bus.app.cli import run_cli
from message_bus.app.cli.transfer_progress import TransferProgress
from message_bus.app.embedded import EmbeddedNatsServer, NatsCluster
from message_bus.domain.errors import BackupError
from message_bus.testing.samples import sample_payload

pytestmark = pytest.mark.timeout(180)

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}
HALF = 40


def payment(n: int) -> Message:
    payload = sample_payload(PAYMENT, payment_id=f"pay_{n}", amount="10.00", corridor="USD-EUR")
    return Message.new(PAYMENT, PartitionKey.corridor("USD-EUR"), payload)


async def consume(
    client: NatsClient, config: SubscriberConfig, handled: list[str], until: int
) -> None:
    """Runs the group until it has handled ``until`` messages and acked them all."""

    async def handle(message: Message) -> None:
        handled.append(message.payload["payment_id"])

    subscriber = JetStreamSubscriber(client, PAYMENT, config, **FAST)  # type: ignore[arg-type]
    subscription = await subscriber.subscribe(FunctionHandler(handle))

    async def acked() -> bool:
        try:
            info = await client.jetstream.consumer_info(STREAM, config.consumer_name, timeout=2)
        except nats.errors.TimeoutError:  # a replicated consumer electing its leader
            return False
        return len(handled) >= until and info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(acked, f"the settlement group to handle and ack {until} payments")
    await subscription.stop()


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await run_cli(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_a_group_continues_where_it_was_after_backup_delete_and_restore(
    client: NatsClient,
    nats_server: EmbeddedNatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = SubscriberConfig(consumer_group="settlement", ack_wait=30.0)
    publisher = JetStreamPublisher(client)
    for n in range(HALF):
        await publisher.publish(payment(n))
    before: list[str] = []
    await consume(client, config, before, HALF)
    for n in range(HALF, 2 * HALF):
        await publisher.publish(payment(n))

    code, out, err = await cli(
        capsys, "streams", "backup", str(tmp_path), "--stream", STREAM, "--url", nats_server.url
    )
    assert (code, err) == (0, ""), err
    assert f"{STREAM}: backed up {2 * HALF} messages, 1 consumer(s)" in out
    await client.jetstream.delete_stream(STREAM)
    code, out, err = await cli(
        capsys, "streams", "restore", str(tmp_path), "--stream", STREAM, "--url", nats_server.url
    )
    assert (code, err) == (0, ""), err
    assert f"{STREAM}: restored {2 * HALF} messages" in out

    info = await client.jetstream.consumer_info(STREAM, config.consumer_name)
    assert info.ack_floor.stream_seq == HALF
    assert info.num_pending == HALF
    after: list[str] = []
    await consume(client, config, after, HALF)

    assert sorted(before) == sorted(f"pay_{n}" for n in range(HALF))
    assert sorted(after) == sorted(f"pay_{n}" for n in range(HALF, 2 * HALF))  # none acked again
    assert len(after) == HALF  # none twice


async def test_the_ordered_groups_bucket_is_backed_up_and_restored_by_name(
    client: NatsClient,
    nats_server: EmbeddedNatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    kv = await client.jetstream.key_value("DELTRAN_ORDERED")  # the catalog created it
    await kv.put("netting.0", b"member-a")
    await kv.put("netting.1", b"member-b")
    bucket = ["--stream", "KV_DELTRAN_ORDERED", "--url", nats_server.url]

    code, out, err = await cli(capsys, "streams", "backup", str(tmp_path), *bucket)
    assert (code, err) == (0, ""), err
    await client.jetstream.delete_stream("KV_DELTRAN_ORDERED")
    code, out, err = await cli(capsys, "streams", "restore", str(tmp_path), *bucket)
    assert (code, err) == (0, ""), err

    assert "KV_DELTRAN_ORDERED: restored 2 messages" in out
    assert sorted(os.listdir(tmp_path)) == [
        "KV_DELTRAN_ORDERED.json",
        "KV_DELTRAN_ORDERED.snapshot",
    ]
    kv = await client.jetstream.key_value("DELTRAN_ORDERED")
    assert (await kv.get("netting.0")).value == b"member-a"
    assert (await kv.get("netting.1")).value == b"member-b"


async def test_a_corrupted_snapshot_is_refused_before_anything_is_sent(
    client: NatsClient, tmp_path: Path
) -> None:
    await JetStreamPublisher(client).publish(payment(1))
    snapshots = StreamSnapshots(client)
    await snapshots.backup(STREAM, tmp_path)
    await client.jetstream.delete_stream(STREAM)
    path = snapshot_path(tmp_path, STREAM)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))

    with pytest.raises(BackupError, match="sha256") as caught:
        await snapshots.restore(STREAM, tmp_path)

    assert caught.value.stream == STREAM
    assert caught.value.path == str(path)
    names = [s.name for s in await StreamManager(client).list()]
    assert STREAM not in names


async def test_an_existing_stream_is_refused_unless_forced(
    client: NatsClient,
    nats_server: EmbeddedNatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    publisher = JetStreamPublisher(client)
    for n in range(3):
        await publisher.publish(payment(n))
    snapshots = StreamSnapshots(client)
    await snapshots.backup(STREAM, tmp_path)
    await publisher.publish(payment(3))  # the live stream moved on: 4 messages

    code, _, err = await cli(
        capsys, "streams", "restore", str(tmp_path), "--stream", STREAM, "--url", nats_server.url
    )
    assert code == 1
    assert "exists" in err
    assert "--force" in err
    assert (await client.jetstream.stream_info(STREAM)).state.messages == 4

    code, _, err = await cli(
        capsys,
        "streams",
        "restore",
        str(tmp_path),
        "--stream",
        STREAM,
        "--force",
        "--url",
        nats_server.url,
    )
    assert (code, err) == (0, ""), err
    assert (await client.jetstream.stream_info(STREAM)).state.messages == 3


async def test_backing_up_every_stream_writes_a_manifest_with_a_checksum_each(
    client: NatsClient,
    nats_server: EmbeddedNatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await JetStreamPublisher(client).publish(payment(1))
    names = sorted(s.name for s in await StreamManager(client).list())

    code, out, err = await cli(capsys, "streams", "backup", str(tmp_path), "--url", nats_server.url)

    assert (code, err) == (0, ""), err
    for name in names:
        manifest = SnapshotManifest.load(tmp_path, name)
        manifest.verify(tmp_path)
        assert json.loads(manifest_path(tmp_path, name).read_text())["sha256"] == manifest.sha256
        assert name in out


async def test_a_snapshot_larger_than_the_flow_control_window_moves_whole_with_progress(
    client: NatsClient, tmp_path: Path
) -> None:
    await client.jetstream.add_stream(name="BULK", subjects=["bulk.>"])
    count = 200  # 12.5 MiB, past the server's 8 MiB window of unacknowledged chunks
    bodies = [os.urandom(64 * 1024) for _ in range(count)]  # incompressible, all different
    for n, body in enumerate(bodies):
        await client.jetstream.publish(f"bulk.{n}", body)
    lines = io.StringIO()
    snapshots = StreamSnapshots(client)

    started = time.monotonic()
    manifest = await snapshots.backup("BULK", tmp_path, TransferProgress("backup", lines))
    backed_up = time.monotonic() - started
    await client.jetstream.delete_stream("BULK")
    started = time.monotonic()
    state = await snapshots.restore("BULK", tmp_path, progress=TransferProgress("restore", lines))
    restored = time.monotonic() - started

    print(f"BULK {manifest.size} bytes: backup {backed_up:.2f}s, restore {restored:.2f}s")
    assert manifest.size > 12 * 1024 * 1024
    assert manifest.chunks > 64
    assert state["messages"] == count
    last = await client.jetstream.get_msg("BULK", count)
    assert last.data == bodies[-1]
    shown = [
        re.fullmatch(r"(\w+) BULK: (\d+)% \(.+iB\)", line) for line in lines.getvalue().splitlines()
    ]
    assert [m.groups() if m else None for m in shown] == [
        (verb, step) for verb in ("backup", "restore") for step in ("25", "50", "75")
    ]


async def test_a_replicated_stream_is_restored_on_a_cluster_with_its_group(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    client = NatsClient(NatsConfig(urls=nats_cluster.urls, reconnect_delay=0.1))
    await client.connect()
    try:
        await StreamManager(client).apply(replicas=3)
        config = SubscriberConfig(consumer_group="settlement", ack_wait=30.0)
        publisher = JetStreamPublisher(client)
        for n in range(10):
            await publisher.publish(payment(n))
        before: list[str] = []
        await consume(client, config, before, 10)
        for n in range(10, 15):
            await publisher.publish(payment(n))
        snapshots = StreamSnapshots(client)

        await snapshots.backup(STREAM, tmp_path)
        state = await snapshots.restore(STREAM, tmp_path, force=True)
        info = await client.jetstream.stream_info(STREAM)
        after: list[str] = []
        await consume(client, config, after, 5)

        assert state["messages"] == 15
        assert info.config.num_replicas == 3
        assert sorted(after) == sorted(f"pay_{n}" for n in range(10, 15))
    finally:
        await client.close()


async def test_backing_up_a_missing_stream_fails_naming_it_and_writes_nothing(
    client: NatsClient,
    nats_server: EmbeddedNatsServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = await cli(
        capsys, "streams", "backup", str(tmp_path), "--stream", "NOPE", "--url", nats_server.url
    )

    assert code == 1
    assert "NOPE" in err
    assert os.listdir(tmp_path) == []
