"""The JetStream subscriber against a real nats-server."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable

import pytest
from nats.js.api import RawStreamMsg

from message_bus import (
    AlreadyReplayedError,
    DeadLetter,
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PermanentError,
    PublisherConfig,
    RetryableError,
    SubscriberConfig,
    current_delivery,
)
from message_bus.adapters.nats import (
    JetStreamDeadLetters,
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
USD_EUR = PartitionKey.corridor("USD-EUR")
GBP_USD = PartitionKey.corridor("GBP-USD")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}


def payment(n: int = 0, key: PartitionKey = USD_EUR) -> Message:
    return Message.new(
        PAYMENT,
        key,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


@pytest.fixture
def publisher(client: NatsClient) -> JetStreamPublisher:
    return JetStreamPublisher(client)


def subscriber(
    client: NatsClient,
    group: str = "workers",
    message_type: MessageType = PAYMENT,
    **config: object,
) -> JetStreamSubscriber:
    settings = SubscriberConfig(consumer_group=group, **config)  # type: ignore[arg-type]
    return JetStreamSubscriber(client, message_type, settings, **FAST)  # type: ignore[arg-type]


class Recorder:
    """A handler that records what it saw and can be told to fail."""

    def __init__(self, fail: Callable[[Message, int], None] | None = None) -> None:
        self.seen: list[tuple[str, int]] = []
        self.fail = fail

    async def handle(self, message: Message) -> None:
        attempt = current_delivery().attempt
        self.seen.append((message.id, attempt))
        if self.fail is not None:
            self.fail(message, attempt)

    @property
    def ids(self) -> list[str]:
        return [message_id for message_id, _ in self.seen]


class SlowRecorder(Recorder):
    """Takes a little while per message, so group members get a chance to share."""

    async def handle(self, message: Message) -> None:
        await super().handle(message)
        await asyncio.sleep(0.01)


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def dead_letters(client: NatsClient, count: int) -> list[DeadLetter]:
    reader = JetStreamDeadLetters(client)
    letters: list[DeadLetter] = []

    async def enough() -> bool:
        nonlocal letters
        letters = await reader.list()
        return len(letters) >= count

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while not await enough():
        assert loop.time() < deadline, f"expected {count} dead letters, found {len(letters)}"
        await asyncio.sleep(0.05)
    return letters


async def _first_stored(client: NatsClient, stream: str) -> RawStreamMsg:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while (await client.jetstream.stream_info(stream)).state.messages == 0:
        assert loop.time() < deadline, f"nothing stored in {stream}"
        await asyncio.sleep(0.02)
    return await client.jetstream.get_msg(stream, 1)


async def ack_floor(client: NatsClient, group: str = "workers") -> int:
    name = SubscriberConfig(consumer_group=group).consumer_name
    info = await client.jetstream.consumer_info("PAYMENT_INSTRUCTIONS", name)
    assert info.ack_floor is not None
    return int(info.ack_floor.stream_seq)


async def wait_for_ack_floor(client: NatsClient, expected: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while (floor := await ack_floor(client)) != expected:
        assert loop.time() < deadline, f"ack floor {floor}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_every_published_message_is_handled_once_and_acked(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    messages = [payment(n) for n in range(50)]
    await publisher.publish_many(messages)
    recorder = Recorder()

    subscription = await subscriber(client).subscribe(recorder)
    await eventually(lambda: len(recorder.seen) == 50)
    await subscription.stop()

    assert sorted(recorder.ids) == sorted(m.id for m in messages)
    assert {attempt for _, attempt in recorder.seen} == {1}
    await wait_for_ack_floor(client, 50)


async def test_members_of_one_group_share_the_work(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    first, second = SlowRecorder(), SlowRecorder()
    a = await subscriber(client, max_concurrent=2).subscribe(first)
    b = await subscriber(client, max_concurrent=2).subscribe(second)
    messages = [payment(n) for n in range(60)]
    await publisher.publish_many(messages)

    await eventually(lambda: len(first.seen) + len(second.seen) == 60)
    await a.stop()
    await b.stop()

    assert sorted(first.ids + second.ids) == sorted(m.id for m in messages)
    assert first.seen
    assert second.seen


async def test_each_group_sees_every_message(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    billing, audit = Recorder(), Recorder()
    await subscriber(client, "billing").subscribe(billing)
    await subscriber(client, "audit").subscribe(audit)
    messages = [payment(n) for n in range(20)]

    await publisher.publish_many(messages)

    await eventually(lambda: len(billing.seen) == 20 and len(audit.seen) == 20)
    assert sorted(billing.ids) == sorted(audit.ids) == sorted(m.id for m in messages)


async def test_a_restarted_group_resumes_after_its_last_ack(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    before = [payment(n) for n in range(5)]
    await publisher.publish_many(before)
    first = Recorder()
    subscription = await subscriber(client).subscribe(first)
    await eventually(lambda: len(first.seen) == 5)
    await subscription.stop()

    after = [payment(n) for n in range(5, 10)]
    await publisher.publish_many(after)
    second = Recorder()
    await subscriber(client).subscribe(second)

    await eventually(lambda: len(second.seen) == 5)
    assert sorted(second.ids) == sorted(m.id for m in after)


async def test_a_retryable_failure_is_redelivered_with_the_next_attempt_number(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    def fail_first(message: Message, attempt: int) -> None:
        if attempt == 1:
            raise RetryableError("bank adapter busy", delay=0.1)

    recorder = Recorder(fail_first)
    message = payment()
    await subscriber(client).subscribe(recorder)

    await publisher.publish(message)

    await eventually(lambda: len(recorder.seen) == 2)
    assert recorder.seen == [(message.id, 1), (message.id, 2)]
    await wait_for_ack_floor(client, 1)


async def test_a_permanent_failure_is_dead_lettered_with_where_it_came_from(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    def reject(message: Message, attempt: int) -> None:
        raise PermanentError("unknown creditor bank")

    recorder = Recorder(reject)
    await subscriber(client, "settlement").subscribe(recorder)
    message = payment()

    receipt = await publisher.publish(message)

    [letter] = await dead_letters(client, 1)
    assert letter.message.id == message.id
    assert letter.message.payload == message.payload
    assert letter.reason == "unknown creditor bank"
    assert letter.subject == message.subject
    assert letter.stream == "PAYMENT_INSTRUCTIONS"
    assert letter.sequence == receipt.sequence
    assert letter.deliveries == 1
    assert letter.consumer_group == "settlement"
    assert letter.dlq_sequence == 1
    await asyncio.sleep(0.3)
    assert recorder.seen == [(message.id, 1)]


async def test_a_message_failing_every_delivery_is_dead_lettered_after_max_deliver(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    def always(message: Message, attempt: int) -> None:
        raise RetryableError("ledger locked", delay=0.05)

    recorder = Recorder(always)
    await subscriber(client, max_deliver=2).subscribe(recorder)
    message = payment()

    await publisher.publish(message)

    [letter] = await dead_letters(client, 1)
    assert letter.reason == "max deliveries (2) exhausted: ledger locked"
    assert letter.deliveries == 2
    assert recorder.seen == [(message.id, 1), (message.id, 2)]


async def test_a_last_delivery_that_times_out_is_dead_lettered_without_the_handler(
    client: NatsClient, publisher: JetStreamPublisher, nats_server: EmbeddedNatsServer
) -> None:
    release = asyncio.Event()
    seen: list[int] = []

    async def hang(message: Message) -> None:
        seen.append(current_delivery().attempt)
        await asyncio.wait_for(release.wait(), 10.0)

    # A member dies with its handler running: nothing keeps the delivery alive any more,
    # so its ack wait expires and the next delivery, past max_deliver, is dead-lettered.
    doomed = NatsClient(NatsConfig(urls=[nats_server.url], max_reconnect_attempts=0))
    await doomed.connect()
    dying = subscriber(doomed, max_deliver=1, ack_wait=1.0, max_concurrent=2)
    await dying.subscribe(FunctionHandler(hang))
    await publisher.publish(payment())
    await eventually(lambda: seen == [1])
    await doomed.close()
    await subscriber(client, max_deliver=1, ack_wait=1.0).subscribe(FunctionHandler(hang))

    [letter] = await dead_letters(client, 1)
    release.set()
    await dying.close()
    assert letter.reason == "max deliveries (1) exhausted: ack wait expired"
    assert letter.deliveries == 1
    assert seen == [1]


async def test_an_undecodable_message_is_dead_lettered_and_the_loop_goes_on(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    recorder = Recorder()
    await subscriber(client).subscribe(recorder)
    await client.jetstream.publish(
        "deltran.payment.instruction.corridor.USD-EUR", b"not json", headers={"X-From": "legacy"}
    )
    good = payment()

    await publisher.publish(good)

    await eventually(lambda: recorder.ids == [good.id])
    stored = await _first_stored(client, "DEAD_LETTERS")
    assert stored.headers is not None
    assert stored.headers["Deltran-Dlq-Reason"].startswith("undecodable: cannot decode")
    assert stored.headers["Deltran-Dlq-Sequence"] == "1"
    # kept raw: the original header block as received, then the original body
    block = b"NATS/1.0\r\nX-From: legacy\r\n\r\n"
    assert stored.headers["Deltran-Dlq-Raw-Header-Bytes"] == str(len(block))
    assert stored.data == block + b"not json"


async def test_explicit_control_nak_then_ack(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    attempts: list[int] = []

    async def handle(message: Message) -> None:
        delivery = current_delivery()
        attempts.append(delivery.attempt)
        if delivery.attempt == 1:
            await delivery.nak(0.05)
            raise RuntimeError("already settled; this changes nothing")
        await delivery.ack()

    await subscriber(client).subscribe(FunctionHandler(handle))

    await publisher.publish(payment())

    await eventually(lambda: attempts == [1, 2])
    await wait_for_ack_floor(client, 1)


async def test_in_progress_keeps_long_work_from_being_redelivered(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    attempts: list[int] = []
    finished = asyncio.Event()

    async def long_work(message: Message) -> None:
        delivery = current_delivery()
        attempts.append(delivery.attempt)
        for _ in range(5):  # 2 s of work with a 1 s ack wait
            await asyncio.sleep(0.4)
            await delivery.in_progress()
        finished.set()

    subscription = await subscriber(client, ack_wait=1.0, max_concurrent=2).subscribe(
        FunctionHandler(long_work)
    )

    await publisher.publish(payment())

    await asyncio.wait_for(finished.wait(), 10.0)
    await subscription.drain()
    assert attempts == [1]
    await wait_for_ack_floor(client, 1)


async def test_no_more_handlers_than_max_concurrent_run_at_once(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    running = 0
    peak = 0
    done = 0

    async def handle(message: Message) -> None:
        nonlocal running, peak, done
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.005)
        running -= 1
        done += 1

    await publisher.publish_many([payment(n) for n in range(100)])

    await subscriber(client, max_concurrent=3).subscribe(FunctionHandler(handle))

    await eventually(lambda: done == 100)
    assert peak == 3


async def test_a_partition_filter_receives_only_its_key(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    recorder = Recorder()
    await subscriber(client, partition_key=GBP_USD).subscribe(recorder)
    gbp = [payment(n, GBP_USD) for n in range(3)]

    await publisher.publish_many([payment(9), *gbp, payment(10)])

    await eventually(lambda: len(recorder.seen) == 3)
    await asyncio.sleep(0.2)
    assert sorted(recorder.ids) == sorted(m.id for m in gbp)


async def test_stop_finishes_in_flight_work_and_releases_the_rest_at_once(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()
    first: list[str] = []

    async def blocking(message: Message) -> None:
        first.append(message.id)
        started.set()
        await asyncio.wait_for(release.wait(), 10.0)

    messages = [payment(n) for n in range(10)]
    await publisher.publish_many(messages)
    subscription = await subscriber(client, max_concurrent=1, ack_wait=30.0).subscribe(
        FunctionHandler(blocking)
    )
    await asyncio.wait_for(started.wait(), 10.0)

    stopping = asyncio.create_task(subscription.stop())
    await asyncio.sleep(0.1)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 10.0)
    assert not subscription.active

    rest = Recorder()
    await subscriber(client).subscribe(rest)
    await eventually(lambda: len(rest.seen) == 9, timeout=5.0)
    assert sorted(first + rest.ids) == sorted(m.id for m in messages)
    assert {attempt for _, attempt in rest.seen} <= {1, 2}


async def test_drain_handles_everything_already_fetched(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    handled: list[str] = []

    async def handle(message: Message) -> None:
        await asyncio.sleep(0.01)
        handled.append(message.id)

    messages = [payment(n) for n in range(20)]
    await publisher.publish_many(messages)
    subscription = await subscriber(client, max_concurrent=5).subscribe(FunctionHandler(handle))
    await eventually(lambda: len(handled) >= 1)

    await subscription.drain()

    count = len(handled)
    assert count >= 1
    await wait_for_ack_floor(client, count)
    info = await client.jetstream.consumer_info(
        "PAYMENT_INSTRUCTIONS", SubscriberConfig(consumer_group="workers").consumer_name
    )
    assert info.num_ack_pending == 0
    assert info.num_pending == 20 - count


async def test_core_only_members_of_one_group_share_broadcast_events(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    first, second, other = Recorder(), Recorder(), Recorder()
    event_type = MessageType.SYSTEM_EVENT
    for recorder, group in ((first, "ops"), (second, "ops"), (other, "audit")):
        await subscriber(client, group, event_type).subscribe(recorder)
    events = [
        Message.new(event_type, PartitionKey.broadcast(), {"event": f"e{n}"}) for n in range(40)
    ]

    for event in events:
        await publisher.publish(event)

    await eventually(lambda: len(first.seen) + len(second.seen) == 40 and len(other.seen) == 40)
    assert Counter(first.ids + second.ids) == Counter(e.id for e in events)


async def test_dead_letter_replay_redelivers_at_once_and_only_once(
    client: NatsClient,
) -> None:
    await StreamManager(client).apply()
    publisher = JetStreamPublisher(client, PublisherConfig())
    outcomes = iter([PermanentError("sanctions hit"), None, None])

    def reject_once(message: Message, attempt: int) -> None:
        error = next(outcomes)
        if error is not None:
            raise error

    recorder = Recorder(reject_once)
    await subscriber(client).subscribe(recorder)
    message = payment()
    await publisher.publish(message)
    [letter] = await dead_letters(client, 1)
    assert letter.dlq_sequence is not None

    # inside the original's 120 s duplicate window: the replay still goes through
    receipt = await JetStreamDeadLetters(client).replay(letter.dlq_sequence)
    with pytest.raises(AlreadyReplayedError):
        await JetStreamDeadLetters(client).replay(letter.dlq_sequence)

    replay_id = f"replay-{letter.dlq_sequence}-1-{message.id}"
    assert (receipt.message_id, receipt.stream, receipt.sequence, receipt.duplicate) == (
        replay_id,
        "PAYMENT_INSTRUCTIONS",
        2,
        False,
    )
    await eventually(lambda: len(recorder.seen) == 2)
    await asyncio.sleep(0.3)  # a second replay would show up by now
    assert recorder.ids == [message.id, message.id]  # handled again under its own id
    with pytest.raises(KeyError):
        await JetStreamDeadLetters(client).replay(99)


async def test_without_jetstream_a_stream_backed_type_travels_on_core_nats(
    client: NatsClient,
) -> None:
    recorder = Recorder()
    core = SubscriberConfig(consumer_group="live", use_jetstream=False)
    subscriber = JetStreamSubscriber(client, PAYMENT, core)
    await subscriber.subscribe(recorder)
    message = payment()

    receipt = await JetStreamPublisher(client, PublisherConfig(use_jetstream=False)).publish(
        message
    )

    assert (receipt.stream, receipt.sequence) == (None, None)
    await eventually(lambda: recorder.seen == [(message.id, 1)])
    await subscriber.close()


async def test_closing_the_client_ends_its_subscriptions(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    pulled = await subscriber(client).subscribe(Recorder())
    core = await subscriber(client, message_type=MessageType.SYSTEM_EVENT).subscribe(Recorder())

    await client.close()

    await eventually(lambda: not pulled.active and not core.active)
    await pulled.stop()
    await core.drain()


async def test_the_dead_letter_list_shows_entries_that_are_not_dead_letters(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    def reject(message: Message, attempt: int) -> None:
        raise PermanentError("duplicate payment")

    await client.jetstream.publish("deltran.dlq.something.else", b"{}")
    await subscriber(client).subscribe(Recorder(reject))
    message = payment()

    await publisher.publish(message)

    foreign, letter = await dead_letters(client, 2)
    assert foreign.message is None
    assert foreign.raw is not None
    assert (foreign.raw.subject, foreign.raw.body) == ("deltran.dlq.something.else", b"{}")
    assert foreign.reason.startswith("not a dead letter")
    assert foreign.dlq_sequence == 1
    assert letter.message is not None
    assert letter.message.id == message.id
    assert letter.dlq_sequence == 2


async def test_a_consumer_deleted_under_a_running_subscription_is_recreated(
    client: NatsClient, publisher: JetStreamPublisher
) -> None:
    recorder = Recorder()
    await subscriber(client).subscribe(recorder)
    first = payment(1)
    await publisher.publish(first)
    await eventually(lambda: recorder.ids == [first.id])

    name = SubscriberConfig(consumer_group="workers").consumer_name
    await client.jetstream.delete_consumer("PAYMENT_INSTRUCTIONS", name)
    second = payment(2)
    await publisher.publish(second)

    await eventually(lambda: second.id in recorder.ids)
    info = await client.jetstream.consumer_info("PAYMENT_INSTRUCTIONS", name)
    assert info.config.max_deliver == -1  # the subscriber counts deliveries itself
