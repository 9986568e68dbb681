"""Dead letters on JetStream that never stall a group, list everything, and replay to one group."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from servers import connect
from waits import eventually

from message_bus import (
    AlreadyReplayedError,
    DeadLetter,
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PermanentError,
    PublisherConfig,
    SubscriberConfig,
)
from message_bus.adapters.nats import (
    JetStreamDeadLetters,
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    StreamManager,
)
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
SUBJECT = "deltran.payment.instruction.corridor.USD-EUR"
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}
SCRIPT = shutil.which("deltran-bus", path=str(Path(sys.executable).parent))

POISON_LINES = {
    "expected stream": b"Nats-Expected-Stream: PAYMENT_INSTRUCTIONS\r\n",
    "NUL in a value": b"X-Poison: a\x00b\r\n",
    "lone LF in a value": b"X-Poison: a\nb\r\n",
}
"""Header lines that a dead letter cannot carry over as headers of its own."""


def payment(n: int = 0) -> Message:
    key = PartitionKey.corridor("USD-EUR")
    return Message.new(
        PAYMENT,
        key,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="1.00"),
    )


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await StreamManager(client).apply()
    yield client
    await client.close()


def subscriber(client: NatsClient, group: str, **config: object) -> JetStreamSubscriber:
    settings = SubscriberConfig(consumer_group=group, **config)  # type: ignore[arg-type]
    return JetStreamSubscriber(client, PAYMENT, settings, **FAST)  # type: ignore[arg-type]


async def letters_at_least(client: NatsClient, count: int) -> list[DeadLetter]:
    found: list[DeadLetter] = []

    async def enough() -> bool:
        found[:] = await JetStreamDeadLetters(client).list(limit=10_000)
        return len(found) >= count

    await eventually(enough, f"{count} dead letters")
    return found


async def raw_publish(url: str, subject: str, block: bytes, body: bytes) -> None:
    """Publishes exactly ``block`` and ``body`` with a bare protocol client (no client
    library between: nats-py would clean the header values)."""
    address = urlparse(url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        await reader.readline()  # INFO
        writer.write(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n')
        command = f"HPUB {subject} {len(block)} {len(block) + len(body)}\r\n".encode()
        writer.write(command + block + body + b"\r\nPING\r\n")
        await writer.drain()
        async with asyncio.timeout(10):
            line = await reader.readline()
            while line.startswith(b"PING") or line.startswith(b"+OK"):
                line = await reader.readline()
        assert line.startswith(b"PONG"), f"the server answered {line!r}, not PONG"
    finally:
        writer.close()
        await writer.wait_closed()


async def stored(client: NatsClient, stream: str, count: int) -> None:
    async def enough() -> bool:
        info = await client.jetstream.stream_info(stream)
        return int(info.state.messages) >= count

    await eventually(enough, f"{count} messages stored in {stream}")


# -- poison headers ------------------------------------------------------------------------


async def test_poison_headers_are_dead_lettered_raw_and_never_stall_the_group(
    nats_server: EmbeddedNatsServer, client: NatsClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="message_bus")
    codec = BlockCodec()
    poison: list[tuple[str, bytes, bytes]] = []  # (kind, header block, body)
    rejected: set[str] = set()
    for kind, line in POISON_LINES.items():
        for n in range(2):  # a foreign message: no bus headers at all
            poison.append((kind, b"NATS/1.0\r\n" + line + b"\r\n", b'{"test": "%d"}' % n))
        # a DelTran message the handler rejects, with the poison header added
        bad = payment(100 + len(rejected))
        rejected.add(bad.id)
        encoded = codec.encode_block(bad)
        poison.append((kind, encoded.header_block[:-2] + line + b"\r\n", encoded.body))
    for _, block, body in poison:
        await raw_publish(nats_server.url, SUBJECT, block, body)
    await stored(client, "PAYMENT_INSTRUCTIONS", len(poison))

    handled: list[str] = []

    async def handle(message: Message) -> None:
        if message.id in rejected:
            raise PermanentError("rejected")
        handled.append(message.id)

    config = {"max_ack_pending": 4, "nak_initial_delay": 0.05, "nak_max_delay": 0.2}
    await subscriber(client, "settlement", **config).subscribe(FunctionHandler(handle))
    good = [payment(n) for n in range(5)]
    for message in good:
        await JetStreamPublisher(client).publish(message)

    async def all_good() -> bool:
        return sorted(handled) == sorted(m.id for m in good)

    await eventually(all_good, "every good message behind the poison ones")
    letters = await letters_at_least(client, len(poison))
    assert len(letters) == len(poison)
    for kind, block, body in poison:
        matching = [
            d
            for d in letters
            if d.raw is not None and (d.raw.header_block, d.raw.body) == (block, body)
        ]
        assert len(matching) == 1, f"{kind}: {len(matching)} raw dead letters of {block!r}"
        assert matching[0].raw is not None
        assert matching[0].raw.subject == SUBJECT
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) <= 2, [r.getMessage() for r in errors]


async def test_a_dead_letter_never_carries_the_original_nats_headers(
    nats_server: EmbeddedNatsServer, client: NatsClient
) -> None:
    message = payment()
    block = BlockCodec().encode_block(message).header_block
    poisoned = block[:-2] + b"Nats-Expected-Stream: PAYMENT_INSTRUCTIONS\r\n\r\n"
    await raw_publish(
        nats_server.url,
        SUBJECT,
        poisoned,
        b'{"payment_id": "p", "amount": "1"}',
    )

    async def reject(message: Message) -> None:
        raise PermanentError("rejected")

    await subscriber(client, "settlement").subscribe(FunctionHandler(reject))
    [letter] = await letters_at_least(client, 1)
    info = await client.jetstream.get_msg("DEAD_LETTERS", 1)
    assert info.headers is not None
    assert [name for name in info.headers if name.lower().startswith("nats-")] == ["Nats-Msg-Id"]
    assert letter.message is not None
    assert letter.message.id == message.id  # the original decodes from the raw form
    assert letter.raw is not None
    assert letter.raw.header_block == poisoned


# -- foreign messages ----------------------------------------------------------------------


async def test_a_foreign_message_is_listed_with_its_raw_view(client: NatsClient) -> None:
    # exactly what `nats pub deltran.payment.instruction.corridor.USD-EUR '{"test": "data"}'` sends
    await client.connection.publish(SUBJECT, b'{"test": "data"}')
    await client.flush()
    await subscriber(client, "settlement").subscribe(FunctionHandler(_never))

    [letter] = await letters_at_least(client, 1)

    assert letter.message is None
    assert letter.raw is not None
    assert (letter.raw.subject, letter.raw.header_block, letter.raw.body) == (
        SUBJECT,
        b"",
        b'{"test": "data"}',
    )
    assert letter.reason.startswith("undecodable: ")
    assert (letter.stream, letter.sequence, letter.dlq_sequence) == ("PAYMENT_INSTRUCTIONS", 1, 1)


async def _never(message: Message) -> None:
    raise AssertionError(f"a foreign message reached the handler: {message}")


def test_dlq_ls_prints_a_foreign_message(nats_server: EmbeddedNatsServer) -> None:
    async def prepare() -> None:
        client = await connect(nats_server.url)
        try:
            await StreamManager(client).apply()
            await client.connection.publish(SUBJECT, b'{"test": "data"}', headers={"X-From": "ops"})
            await client.flush()
            subscription = await subscriber(client, "settlement").subscribe(FunctionHandler(_never))
            await letters_at_least(client, 1)
            await subscription.stop()
        finally:
            await client.close()

    asyncio.run(prepare())
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELTRAN_")}
    command = [SCRIPT] if SCRIPT else [sys.executable, "-m", "message_bus.app.cli"]
    result = subprocess.run(
        [*command, "dlq", "ls", "--url", nats_server.url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "1 dead letter(s)" in result.stdout
    assert "(raw)" in result.stdout
    assert f"raw dead letter 1: subject {SUBJECT}" in result.stdout
    assert "X-From: ops" in result.stdout
    assert '{"test": "data"}' in result.stdout


# -- replay to one group -------------------------------------------------------------------


async def test_a_replay_reaches_only_the_group_that_dead_lettered_it(client: NatsClient) -> None:
    ledger: list[str] = []
    netting: list[str] = []

    async def book(message: Message) -> None:
        ledger.append(message.id)

    async def net(message: Message) -> None:
        netting.append(message.id)
        if len(netting) == 1:
            raise PermanentError("netting window closed")

    await subscriber(client, "ledger").subscribe(FunctionHandler(book))
    await subscriber(client, "netting").subscribe(FunctionHandler(net))
    sent = payment()
    await JetStreamPublisher(client).publish(sent)
    [letter] = await letters_at_least(client, 1)
    assert letter.consumer == SubscriberConfig(consumer_group="netting").consumer_name
    assert letter.dlq_sequence is not None

    receipt = await JetStreamDeadLetters(client).replay(letter.dlq_sequence)

    async def handled_again() -> bool:
        return len(netting) == 2

    await eventually(handled_again, "the replay in group netting")
    assert netting == [sent.id, sent.id]
    assert ledger == [sent.id]
    [listed] = await JetStreamDeadLetters(client).list()
    assert listed.replayed is not None
    assert (listed.replayed.stream, listed.replayed.sequence) == (receipt.stream, receipt.sequence)
    with pytest.raises(AlreadyReplayedError):
        await JetStreamDeadLetters(client).replay(letter.dlq_sequence)


async def test_a_replay_is_remembered_past_the_duplicate_window_and_a_restart(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url)
    await StreamManager(client).apply(duplicate_window=1.0)

    async def reject(message: Message) -> None:
        raise PermanentError("rejected")

    subscription = await subscriber(client, "netting").subscribe(FunctionHandler(reject))
    # A 1 s window suits a publisher whose retries all fit in 0.5 s.
    publisher = JetStreamPublisher(client, PublisherConfig(publish_timeout=0.5))
    await publisher.publish(payment())
    [letter] = await letters_at_least(client, 1)
    assert letter.dlq_sequence is not None
    await JetStreamDeadLetters(client).replay(letter.dlq_sequence)
    replayed_at = time.monotonic()
    await subscription.stop()
    await client.close()
    nats_server.restart()
    # the duplicate window (1 s) is a span of time, not a condition to poll for
    await asyncio.sleep(max(0.0, replayed_at + 1.2 - time.monotonic()))

    client = await connect(nats_server.url)
    try:
        with pytest.raises(AlreadyReplayedError):
            await JetStreamDeadLetters(client).replay(letter.dlq_sequence)
        letters = await JetStreamDeadLetters(client).list()
        [again] = [d for d in letters if d.dlq_sequence == letter.dlq_sequence]
        assert again.replayed is not None
        assert again.replayed.count == 1
    finally:
        await client.close()


async def test_a_replay_that_fails_again_is_dead_lettered_as_the_original(
    client: NatsClient,
) -> None:
    async def reject(message: Message) -> None:
        raise PermanentError("still rejected")

    await subscriber(client, "netting").subscribe(FunctionHandler(reject))
    sent = payment()
    await JetStreamPublisher(client).publish(sent)
    [first] = await letters_at_least(client, 1)
    assert first.dlq_sequence is not None

    receipt = await JetStreamDeadLetters(client).replay(first.dlq_sequence)

    _, again = await letters_at_least(client, 2)
    assert again.message is not None
    assert again.message.id == sent.id
    assert again.subject == sent.subject
    assert again.raw is None  # the replay copy's own headers are not what it records
    assert (again.stream, again.sequence) == (receipt.stream, receipt.sequence)
    assert again.dlq_sequence is not None
    await JetStreamDeadLetters(client).replay(again.dlq_sequence)  # replayable in turn


async def test_a_consumer_created_before_replays_existed_gets_its_replay_subject(
    client: NatsClient,
) -> None:
    config = SubscriberConfig(consumer_group="netting")
    await client.jetstream.add_consumer(
        "PAYMENT_INSTRUCTIONS",
        ConsumerConfig(
            durable_name=config.consumer_name,
            ack_policy=AckPolicy.EXPLICIT,
            filter_subject="deltran.payment.instruction.>",
            ack_wait=config.ack_wait,
            max_deliver=-1,
            max_ack_pending=config.max_ack_pending,
        ),
    )
    seen: list[str] = []

    async def reject_first(message: Message) -> None:
        seen.append(message.id)
        if len(seen) == 1:
            raise PermanentError("rejected")

    await subscriber(client, "netting").subscribe(FunctionHandler(reject_first))
    sent = payment()
    await JetStreamPublisher(client).publish(sent)
    [letter] = await letters_at_least(client, 1)
    assert letter.dlq_sequence is not None
    await JetStreamDeadLetters(client).replay(letter.dlq_sequence)

    async def handled_again() -> bool:
        return len(seen) == 2

    await eventually(handled_again, "the replay through the updated consumer")
    info = await client.jetstream.consumer_info("PAYMENT_INSTRUCTIONS", config.consumer_name)
    assert sorted(info.config.filter_subjects or []) == [
        "deltran.payment.instruction.>",
        f"deltran.replay.PAYMENT_INSTRUCTIONS.{config.consumer_name}",
    ]
