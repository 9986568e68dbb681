"""``deltran-bus groups ls`` on a real nats-server: a shared group's backlog, an ordered
group's partition owners, the JSON and the ``--watch`` frames."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re

import pytest
from proxy import TcpProxy
from waits import eventually

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    RetryableError,
    SubscriberConfig,
    current_delivery,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.adapters.nats.group_status import GroupsStatus, read_groups
from message_bus.app.cli import run_cli
from message_bus.app.cli.groups import CLEAR_HOME
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

pytestmark = pytest.mark.timeout(120)

PAYMENT = MessageType.PAYMENT_INSTRUCTION
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}
CORRIDORS = ["USD-EUR", "GBP-USD", "EUR-JPY", "CHF-USD", "AUD-NZD", "CAD-USD"]


def payment(n: int, corridor: str = "USD-EUR") -> Message:
    key = PartitionKey.corridor(corridor)
    payload = sample_payload(PAYMENT, payment_id=f"pay_{n}", amount="10.00", corridor=corridor)
    return Message.new(PAYMENT, key, payload)


async def groups_ls(url: str, capsys: pytest.CaptureFixture[str], *options: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await run_cli(["groups", "ls", "--url", url, *options])
    captured = capsys.readouterr()
    assert captured.err == "", captured.err
    return code, captured.out


async def status_of(client: NatsClient) -> GroupsStatus:
    return await read_groups(client)


async def test_a_shared_group_shows_pending_ack_pending_redelivered_and_lag(
    client: NatsClient, nats_server: EmbeddedNatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    release = asyncio.Event()
    attempts: dict[str, int] = {}

    async def handle(message: Message) -> None:
        attempts[message.id] = attempts.get(message.id, 0) + 1
        if message.payload["payment_id"] == "pay_0" and attempts[message.id] == 1:
            raise RetryableError("first delivery fails on purpose", delay=0.1)
        await release.wait()

    config = SubscriberConfig(
        consumer_group="screening", max_ack_pending=3, max_concurrent=10, ack_wait=30.0
    )
    subscriber = JetStreamSubscriber(client, PAYMENT, config, **FAST)  # type: ignore[arg-type]
    publisher = JetStreamPublisher(client)
    for n in range(8):
        await publisher.publish(payment(n))
    subscription = await subscriber.subscribe(FunctionHandler(handle))
    name = config.consumer_name

    async def backlog() -> bool:
        rows = {c.name: c for c in (await status_of(client)).consumers}
        row = rows.get(name)
        return row is not None and (row.ack_pending, row.pending, row.redelivered) == (3, 5, 1)

    await eventually(backlog, "3 ack pending, 5 pending, 1 redelivered in the screening group")
    code, out = await groups_ls(nats_server.url, capsys)

    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == [
        "STREAM", "CONSUMER", "PENDING", "ACK", "PENDING", "REDELIVERED", "LAG", "WAITING",
        "LAST", "ACTIVE",
    ]  # fmt: skip
    [row] = [r for r in rows if name in r]
    cells = row.split()
    assert cells[:6] == ["PAYMENT_INSTRUCTIONS", name, "5", "3", "1", "8"]
    assert re.fullmatch(r"now|\d+s", cells[-1]), row  # it just delivered

    release.set()

    async def drained() -> bool:
        row = {c.name: c for c in (await status_of(client)).consumers}[name]
        return (row.ack_pending, row.pending, row.lag) == (0, 0, 0)

    await eventually(drained, "the screening group to ack all 8 payments")
    code, out = await groups_ls(nats_server.url, capsys, "--json")
    [record] = [c for c in json.loads(out)["consumers"] if c["consumer"] == name]

    assert code == 0
    assert record["pending"] == 0
    assert record["ack_pending"] == 0
    assert record["redelivered"] == 0
    assert record["lag"] == 0
    assert record["idle_seconds"] is not None
    assert record["idle_seconds"] < 60
    await subscription.stop()


async def test_ephemeral_readers_are_hidden_unless_all_is_given(
    client: NatsClient, nats_server: EmbeddedNatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.jetstream.add_consumer(
        "PAYMENT_INSTRUCTIONS", name="ephemeral-0123456789abcdef", inactive_threshold=60.0
    )
    await client.jetstream.add_consumer(
        "PAYMENT_INSTRUCTIONS", durable_name="audit__reports", inactive_threshold=60.0
    )

    _, default = await groups_ls(nats_server.url, capsys)
    _, everything = await groups_ls(nats_server.url, capsys, "--all")

    assert "audit__reports" in default
    assert "ephemeral-0123456789abcdef" not in default
    assert "ephemeral-0123456789abcdef" in everything


async def test_an_ordered_group_shows_two_members_sharing_the_partitions(
    client: NatsClient, nats_server: EmbeddedNatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    handled: list[str] = []

    async def handle(message: Message) -> None:
        assert current_delivery() is not None
        handled.append(message.id)

    config = SubscriberConfig(
        consumer_group="netting", ordering="partition", partitions=4, failover_timeout=2.0
    )
    members = [
        JetStreamSubscriber(client, PAYMENT, config, **FAST)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    subscriptions = [await m.subscribe(FunctionHandler(handle)) for m in members]
    publisher = JetStreamPublisher(client)
    for n, corridor in enumerate(CORRIDORS * 3):
        await publisher.publish(payment(n, corridor))
    name = config.consumer_name

    async def balanced_and_done() -> bool:
        status = await status_of(client)
        groups = [g for g in status.ordered if g.name == name]
        if not groups or len(handled) < len(CORRIDORS) * 3:
            return False
        group = groups[0]
        return (
            len(group.members) == 2
            and sorted(group.owned().values()) == [2, 2]
            and all(r.lag == 0 for r in group.records)
        )

    await eventually(balanced_and_done, "2 members owning 2 of 4 partitions each, caught up")
    code, out = await groups_ls(nats_server.url, capsys)
    status = await status_of(client)
    [group] = [g for g in status.ordered if g.name == name]

    assert code == 0
    assert f"ordered group PAYMENT_INSTRUCTIONS {name}: 4 partitions, 2 member(s)" in out
    assert ", 0 unowned, lag 0" in out
    for member in group.members:
        assert any(line.split()[:2] == [member, "2"] for line in out.splitlines())
    floors = {r.partition: r.floor for r in group.records}
    for record in group.records:
        line = next(
            x for x in out.splitlines() if x.split()[:2] == [str(record.partition), record.owner]
        )
        assert line.split()[2:4] == [str(floors[record.partition]), "0"]
    assert max(floors.values()) == len(CORRIDORS) * 3

    code, out = await groups_ls(nats_server.url, capsys, "--json")
    [ordered] = [g for g in json.loads(out)["ordered"] if g["consumer"] == name]
    assert ordered["partitions"] == 4
    assert sorted(m["partitions"] for m in ordered["members"]) == [2, 2]
    assert all(m["registered"] for m in ordered["members"])
    assert [r["partition"] for r in ordered["records"]] == [0, 1, 2, 3]
    for subscription in subscriptions:
        await subscription.stop()

    receipt = await publisher.publish(payment(99, "USD-EUR"))
    partition = PartitionKey.corridor("USD-EUR").partition_number(4)
    assert partition is not None
    assert receipt.sequence is not None
    code, out = await groups_ls(nats_server.url, capsys)
    line = next(x for x in out.splitlines() if x.split()[:2] == [str(partition), "-"])

    assert "0 member(s), 4 unowned" in out
    assert "no members: each partition resumes after its floor" in out
    assert line.split()[2:4] == [str(floors[partition]), str(receipt.sequence - floors[partition])]


async def test_watch_redraws_the_screen_count_times(
    client: NatsClient, nats_server: EmbeddedNatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.jetstream.add_consumer(
        "PAYMENT_INSTRUCTIONS", durable_name="audit__reports", inactive_threshold=60.0
    )

    code, out = await groups_ls(nats_server.url, capsys, "--watch", "0.2", "--count", "3")

    assert code == 0
    frames = out.split(CLEAR_HOME)
    assert frames[0] == ""
    assert len(frames) == 4
    for frame in frames[1:]:
        assert frame.startswith("every 0.2s, ")
        assert "audit__reports" in frame


async def test_watch_with_json_prints_one_document_per_line_without_screen_control(
    client: NatsClient, nats_server: EmbeddedNatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    await client.jetstream.add_consumer(
        "PAYMENT_INSTRUCTIONS", durable_name="audit__reports", inactive_threshold=60.0
    )

    code, out = await groups_ls(nats_server.url, capsys, "--watch", "0.2", "--count", "2", "--json")

    assert code == 0
    assert "\x1b" not in out
    documents = [json.loads(line) for line in out.splitlines()]
    assert len(documents) == 2
    for document in documents:
        assert [c["consumer"] for c in document["consumers"]] == ["audit__reports"]


async def test_on_a_server_without_streams_it_lists_nothing_and_creates_nothing(
    nats_server: EmbeddedNatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = await groups_ls(nats_server.url, capsys)

    assert code == 0
    assert out.strip() == "no consumer groups (ordered groups, if any, below)"
    async with NatsClient(NatsConfig(urls=[nats_server.url])) as client:
        assert await StreamManager(client).list() == []


async def test_a_watch_shows_an_outage_and_recovers_from_it(
    client: NatsClient,
    nats_server: EmbeddedNatsServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await client.jetstream.add_consumer(
        "PAYMENT_INSTRUCTIONS", durable_name="audit__reports", inactive_threshold=60.0
    )
    monkeypatch.setenv("DELTRAN_NATS_RECONNECT_DELAY", "0.05")
    monkeypatch.setenv("DELTRAN_NATS_RECONNECT_MAX_DELAY", "0.2")
    seen: list[str] = []

    def frames() -> list[str]:
        seen.append(capsys.readouterr().out)
        return "".join(seen).split(CLEAR_HOME)[1:]

    with TcpProxy("127.0.0.1", nats_server.port) as proxy:
        capsys.readouterr()
        watch = asyncio.create_task(
            run_cli(["groups", "ls", "--url", proxy.url, "--watch", "0.2", "--count", "1000"])
        )
        try:
            await eventually(
                lambda: any("audit__reports" in f for f in frames()), "a frame with the group"
            )
            proxy.refuse()
            proxy.cut()
            await eventually(
                lambda: any("server unavailable: " in f for f in frames()),
                "a frame saying the server is unavailable",
            )
            proxy.heal()
            outage_ended = len(frames())
            await eventually(
                lambda: any("audit__reports" in f for f in frames()[outage_ended:]),
                "a frame with the group again after the outage",
            )
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
