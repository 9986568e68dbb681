"""Behaviour of the in-memory broker beyond the shared contract: its clock, max age,
windows, limits and operator tools."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from message_bus import (
    AlreadyReplayedError,
    ClosedError,
    FunctionHandler,
    Message,
    MessageType,
    NotFoundError,
    PartitionKey,
    PermanentError,
    PublisherConfig,
    RequestTimeout,
    StreamCatalog,
    StreamSpec,
    SubscriberConfig,
    ValidationError,
    current_delivery,
)
from message_bus.adapters.memory import InMemoryBroker, ManualClock, SystemClock
from message_bus.testing import Gate, eventually
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
KEY = PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L")


def payment(n: int = 0, key: PartitionKey = KEY) -> Message:
    return Message.new(PAYMENT, key, sample_payload(PAYMENT, payment_id=f"pay-{n}"))


class Recorder:
    """Records (message id, attempt) of every delivery; optionally blocks until released."""

    def __init__(self, *, block: bool = False) -> None:
        self.seen: list[tuple[str, int]] = []
        self.release = Gate(10.0)
        if not block:
            self.release.open()

    async def handle(self, message: Message) -> None:
        self.seen.append((message.id, current_delivery().attempt))
        await self.release.wait()

    def attempts(self, message: Message) -> list[int]:
        return [attempt for message_id, attempt in self.seen if message_id == message.id]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def broker(clock: ManualClock) -> AsyncIterator[InMemoryBroker]:
    broker = InMemoryBroker(clock=clock)
    yield broker
    await broker.close()


def config(**overrides: Any) -> SubscriberConfig:
    settings: dict[str, Any] = {"consumer_group": "settlement", "ack_wait": 30.0}
    settings.update(overrides)
    return SubscriberConfig(**settings)


async def subscribe(broker: InMemoryBroker, recorder: Recorder, **overrides: Any) -> Any:
    subscriber = broker.subscriber(PAYMENT, config(**overrides))
    return await subscriber.subscribe(FunctionHandler(recorder.handle))


# -- clock ------------------------------------------------------------------------------


def test_manual_clock_runs_due_timers_in_deadline_order_at_their_own_time() -> None:
    clock = ManualClock()
    fired: list[tuple[str, float]] = []
    clock.call_at(5.0, lambda: fired.append(("late", clock.now())))
    clock.call_at(2.0, lambda: fired.append(("early", clock.now())))

    def chain() -> None:
        clock.call_at(3.0, lambda: fired.append(("chained", clock.now())))

    clock.call_at(2.5, chain)
    clock.call_at(4.0, lambda: fired.append(("cancelled", clock.now()))).cancel()
    clock.advance(4.5)
    assert fired == [("early", 2.0), ("chained", 3.0)]
    assert clock.now() == 4.5
    clock.advance(1.0)
    assert fired[-1] == ("late", 5.0)


def test_manual_clock_refuses_to_go_back() -> None:
    with pytest.raises(ValueError, match="back in time"):
        ManualClock().advance(-1.0)


def test_manual_clock_wall_time_follows_its_advances() -> None:
    clock = ManualClock()
    start = clock.utcnow()
    clock.advance(90.0)
    assert (clock.utcnow() - start).total_seconds() == 90.0


async def test_system_clock_keeps_a_running_handler_alive_and_cuts_it_off_in_real_time() -> None:
    async with InMemoryBroker(clock=SystemClock()) as broker:
        recorder = Recorder(block=True)
        await subscribe(
            broker,
            recorder,
            ack_wait=0.05,
            max_handler_time=0.3,
            nak_initial_delay=0.0,
            max_concurrent=2,
        )
        sent = payment()
        await broker.publisher().publish(sent)
        await eventually(lambda: recorder.attempts(sent) == [1, 2], timeout=5.0)
        recorder.release.open()


# -- streams ----------------------------------------------------------------------------


async def test_messages_older_than_max_age_are_gone_and_never_delivered() -> None:
    clock = ManualClock()
    catalog = StreamCatalog.default().with_max_age(PAYMENT, 60.0)
    async with InMemoryBroker(clock=clock, catalog=catalog) as broker:
        publisher = broker.publisher()
        await publisher.publish(payment(1))
        clock.advance(30.0)
        kept = payment(2)
        await publisher.publish(kept)
        clock.advance(30.0)
        state = broker.stream_info(STREAM)
        assert (state.messages, state.first_sequence, state.last_sequence) == (1, 2, 2)
        recorder = Recorder()
        await subscribe(broker, recorder)
        await broker.settle()
        assert recorder.seen == [(kept.id, 1)]


async def test_a_message_that_expires_while_waiting_for_redelivery_is_not_redelivered() -> None:
    clock = ManualClock()
    catalog = StreamCatalog.default().with_max_age(PAYMENT, 60.0)
    async with InMemoryBroker(clock=clock, catalog=catalog) as broker:
        recorder = Recorder()
        subscriber = broker.subscriber(PAYMENT, config(max_deliver=5))

        async def fail(message: Message) -> None:
            await recorder.handle(message)
            await current_delivery().nak(delay=120.0)

        await subscriber.subscribe(FunctionHandler(fail))
        sent = payment()
        await broker.publisher().publish(sent)
        await broker.settle()
        clock.advance(121.0)
        await broker.settle()
        assert recorder.attempts(sent) == [1]
        assert broker.consumer_info(STREAM, subscriber.config.consumer_name).ack_pending == 0
        assert await broker.dead_letters().list() == []


async def test_an_id_is_stored_again_once_the_duplicate_window_has_passed(
    broker: InMemoryBroker, clock: ManualClock
) -> None:
    publisher = broker.publisher()
    sent = payment()
    first = await publisher.publish(sent)
    clock.advance(119.0)
    assert (await publisher.publish(sent)).duplicate
    clock.advance(2.0)
    again = await publisher.publish(sent)
    assert not again.duplicate
    assert again.sequence == (first.sequence or 0) + 1


async def test_received_messages_are_copies_not_the_published_objects(
    broker: InMemoryBroker,
) -> None:
    payload: dict[str, Any] = sample_payload(PAYMENT, lines=[1, 2])
    sent = Message.new(PAYMENT, KEY, payload)
    received: list[Message] = []
    seen_lines: list[list[int]] = []

    async def keep(message: Message) -> None:
        received.append(message)
        seen_lines.append(list(message.payload["lines"]))
        message.payload["lines"].append(99)

    for group in ("first", "second"):
        await broker.subscriber(PAYMENT, config(consumer_group=group)).subscribe(
            FunctionHandler(keep)
        )
    await broker.publisher().publish(sent)
    payload["lines"].append(3)
    await broker.settle()
    assert seen_lines == [[1, 2], [1, 2]]
    assert received[0] is not sent
    assert received[0].payload is not received[1].payload


async def test_core_publish_of_a_stream_type_is_captured_by_its_stream(
    broker: InMemoryBroker,
) -> None:
    live = Recorder()
    await subscribe(broker, live, use_jetstream=False, consumer_group="live")
    receipt = await broker.publisher(PublisherConfig(use_jetstream=False)).publish(payment())
    assert (receipt.stream, receipt.sequence) == (None, None)
    assert broker.stream_info(STREAM).messages == 1
    await broker.settle()
    assert len(live.seen) == 1


async def test_a_group_on_a_stream_shared_by_two_types_receives_only_its_own_type() -> None:
    netting = MessageType.NETTING_PROPOSAL
    shared = StreamSpec(
        "SETTLEMENT_FLOW",
        (f"{PAYMENT.subject_prefix}.>", f"{netting.subject_prefix}.>"),
        7 * 86400.0,
    )
    catalog = StreamCatalog({PAYMENT: shared, netting: shared})
    async with InMemoryBroker(clock=ManualClock(), catalog=catalog) as broker:
        proposal = Message.new(netting, KEY, sample_payload(netting))
        sent = payment()
        await broker.publisher().publish_many([proposal, sent])
        recorder = Recorder()
        await subscribe(broker, recorder)
        await broker.settle()
        assert recorder.seen == [(sent.id, 1)]


# -- consumer groups ----------------------------------------------------------------------


async def test_max_ack_pending_bounds_unacknowledged_deliveries_of_the_group(
    broker: InMemoryBroker,
) -> None:
    recorder = Recorder(block=True)
    subscription = await subscribe(broker, recorder, max_ack_pending=2, max_concurrent=5)
    await broker.publisher().publish_many([payment(n) for n in range(5)])
    await broker.settle()
    assert len(recorder.seen) == 2
    recorder.release.open()
    await broker.settle()
    assert len(recorder.seen) == 5
    await subscription.stop()


async def test_stop_lets_the_handler_in_flight_finish_and_settle(
    broker: InMemoryBroker,
) -> None:
    recorder = Recorder(block=True)
    subscription = await subscribe(broker, recorder)
    await broker.publisher().publish(payment())
    await broker.settle()
    stopping = asyncio.ensure_future(subscription.stop())
    await broker.settle()
    assert not stopping.done()
    recorder.release.open()
    await stopping
    state = broker.consumer_info(STREAM, config().consumer_name)
    assert (state.ack_pending, state.members, state.delivered_sequence) == (0, 0, 1)


async def test_explicit_nak_on_the_last_allowed_delivery_dead_letters_it(
    broker: InMemoryBroker,
) -> None:
    async def nak(message: Message) -> None:
        await current_delivery().nak()

    await broker.subscriber(PAYMENT, config(max_deliver=2)).subscribe(FunctionHandler(nak))
    sent = payment()
    await broker.publisher().publish(sent)
    await broker.settle()
    [dead] = await broker.dead_letters().list()
    assert dead.message.id == sent.id
    assert dead.reason == "max deliveries (2) exhausted: nak"
    assert dead.deliveries == 2


async def test_a_handler_running_past_ack_wait_is_kept_alive_and_its_late_ack_counts(
    broker: InMemoryBroker, clock: ManualClock
) -> None:
    recorder = Recorder(block=True)
    await subscribe(broker, recorder, max_concurrent=2, ack_wait=10.0)
    sent = payment()
    await broker.publisher().publish(sent)
    await broker.settle()
    clock.advance(35.0)
    await broker.settle()
    assert recorder.attempts(sent) == [1]
    recorder.release.open()
    await broker.settle()
    clock.advance(60.0)
    await broker.settle()
    assert recorder.attempts(sent) == [1]
    assert broker.consumer_info(STREAM, config().consumer_name).ack_pending == 0


async def test_term_without_dead_letter_drops_the_message(broker: InMemoryBroker) -> None:
    async def reject(message: Message) -> None:
        raise PermanentError("duplicate payment")

    subscriber = broker.subscriber(PAYMENT, config(dead_letter=False))
    await subscriber.subscribe(FunctionHandler(reject))
    await broker.publisher().publish(payment())
    await broker.settle()
    assert await broker.dead_letters().list() == []
    assert broker.consumer_info(STREAM, subscriber.config.consumer_name).ack_pending == 0


async def test_a_handler_can_stop_its_own_subscription(broker: InMemoryBroker) -> None:
    subscriptions: list[Any] = []
    handled: list[str] = []

    async def once(message: Message) -> None:
        handled.append(message.id)
        await subscriptions[0].stop()

    subscriptions.append(
        await broker.subscriber(PAYMENT, config(max_concurrent=1)).subscribe(FunctionHandler(once))
    )
    await broker.publisher().publish_many([payment(1), payment(2)])
    await broker.settle()
    assert len(handled) == 1
    assert not subscriptions[0].active


async def test_drain_of_a_stream_subscription_finishes_the_handler_in_flight_and_takes_no_more(
    broker: InMemoryBroker,
) -> None:
    recorder = Recorder(block=True)
    subscription = await subscribe(broker, recorder, max_concurrent=1)
    sent = [payment(n) for n in range(5)]
    await broker.publisher().publish_many(sent)
    await broker.settle()
    draining = asyncio.ensure_future(subscription.drain())
    await broker.settle()
    recorder.release.open()
    await asyncio.wait_for(draining, 5.0)
    assert recorder.seen == [(sent[0].id, 1)]
    state = broker.consumer_info(STREAM, config().consumer_name)
    assert (state.ack_pending, state.delivered_sequence) == (0, 1)
    rest = Recorder()
    await subscribe(broker, rest)
    await broker.settle()
    assert rest.seen == [(m.id, 1) for m in sent[1:]]


async def test_a_message_whose_woken_member_stops_goes_to_another_idle_member(
    broker: InMemoryBroker,
) -> None:
    first, second = Recorder(), Recorder()
    leaving = await subscribe(broker, first, max_concurrent=1)
    await subscribe(broker, second, max_concurrent=1)
    await broker.settle()  # both members idle, the first one first in line
    sent = payment()
    await broker.publisher().publish(sent)  # wakes the first member's worker...
    await leaving.stop()  # ...which leaves before it runs
    await broker.settle()
    assert (first.seen, second.seen) == ([], [(sent.id, 1)])


async def test_handlers_that_stop_their_own_subscription_do_not_wait_for_each_other(
    broker: InMemoryBroker,
) -> None:
    subscriptions: list[Any] = []
    both_running = Gate(5.0)
    stopped: list[str] = []

    async def stop_on_failure(message: Message) -> None:
        stopped.append(message.id)
        if len(stopped) == 2:
            both_running.open()
        await both_running.wait()
        await subscriptions[0].stop()

    subscriber = broker.subscriber(PAYMENT, config(max_concurrent=2))
    subscriptions.append(await subscriber.subscribe(FunctionHandler(stop_on_failure)))
    await broker.publisher().publish_many([payment(1), payment(2)])
    await asyncio.wait_for(subscriptions[0].stop(), 5.0)
    assert len(stopped) == 2
    assert not both_running.timed_out
    assert broker.consumer_info(STREAM, config().consumer_name).ack_pending == 0


async def test_a_handler_that_raises_cancelled_error_is_retried_and_its_worker_goes_on(
    broker: InMemoryBroker, clock: ManualClock
) -> None:
    recorder = Recorder()

    async def await_a_cancelled_call(message: Message) -> None:
        await recorder.handle(message)
        if current_delivery().attempt == 1:
            call: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            call.cancel()  # e.g. an outbound call cancelled by its own timeout
            await call

    subscriber = broker.subscriber(PAYMENT, config(max_concurrent=1, nak_initial_delay=5.0))
    subscription = await subscriber.subscribe(FunctionHandler(await_a_cancelled_call))
    first, second = payment(1), payment(2)
    await broker.publisher().publish_many([first, second])
    await broker.settle()
    assert recorder.seen == [(first.id, 1), (second.id, 1)]
    clock.advance(5.0)
    await broker.settle()
    assert recorder.attempts(first) == [1, 2]
    assert subscription.active


async def test_cancelling_a_stop_does_not_cancel_the_handler_it_waits_for(
    broker: InMemoryBroker, clock: ManualClock
) -> None:
    recorder = Recorder(block=True)
    subscription = await subscribe(broker, recorder)
    sent = payment()
    await broker.publisher().publish(sent)
    await broker.settle()
    stopping = asyncio.ensure_future(subscription.stop())
    await broker.settle()
    stopping.cancel()
    await broker.settle()
    recorder.release.open()
    await broker.settle()
    assert broker.consumer_info(STREAM, config().consumer_name).ack_pending == 0
    clock.advance(60.0)
    await broker.settle()
    assert recorder.attempts(sent) == [1]


# -- core and request-reply ---------------------------------------------------------------


async def test_drain_of_a_core_subscription_handles_what_it_already_received(
    broker: InMemoryBroker,
) -> None:
    recorder = Recorder(block=True)
    subscriber = broker.subscriber(MessageType.SYSTEM_EVENT, config(max_concurrent=1))
    subscription = await subscriber.subscribe(FunctionHandler(recorder.handle))
    publisher = broker.publisher()
    events = [
        Message.new(
            MessageType.SYSTEM_EVENT,
            PartitionKey.broadcast(),
            sample_payload(MessageType.SYSTEM_EVENT, event=f"event-{n}"),
        )
        for n in range(3)
    ]
    for event in events:
        await publisher.publish(event)
    await broker.settle()
    draining = asyncio.ensure_future(subscription.drain())
    await broker.settle()
    late = sample_payload(MessageType.SYSTEM_EVENT, event="late")
    await publisher.publish(Message.new(MessageType.SYSTEM_EVENT, PartitionKey.broadcast(), late))
    recorder.release.open()
    await draining
    assert [message_id for message_id, _ in recorder.seen] == [e.id for e in events]


async def test_request_times_out_by_the_broker_clock(
    broker: InMemoryBroker, clock: ManualClock
) -> None:
    async def silent(message: Message) -> None:
        return None

    await broker.subscriber(MessageType.RISK_ASSESSMENT, config()).subscribe(
        FunctionHandler(silent)
    )
    request = Message.new(MessageType.RISK_ASSESSMENT, KEY, {"payment_id": "pay-1"})
    waiting = asyncio.ensure_future(broker.publisher().request(request, timeout=2.0))
    await broker.settle()
    assert not waiting.done()
    clock.advance(2.0)
    with pytest.raises(RequestTimeout):
        await waiting


async def test_closing_the_broker_fails_requests_still_waiting(broker: InMemoryBroker) -> None:
    release = Gate(10.0)

    async def slow(message: Message) -> None:
        await release.wait()

    await broker.subscriber(MessageType.RISK_ASSESSMENT, config()).subscribe(FunctionHandler(slow))
    request = Message.new(MessageType.RISK_ASSESSMENT, KEY, {"payment_id": "pay-1"})
    waiting = asyncio.ensure_future(broker.publisher().request(request, timeout=30.0))
    await broker.settle()
    closing = asyncio.ensure_future(broker.close())
    await broker.settle()
    release.open()
    await closing
    with pytest.raises(ClosedError):
        await waiting


# -- dead letters -------------------------------------------------------------------------


async def test_replay_delivers_a_dead_letter_again_at_once_and_only_once(
    broker: InMemoryBroker, clock: ManualClock
) -> None:
    outcomes = iter(["reject", "accept", "accept"])
    accepted: list[Message] = []

    async def handle(message: Message) -> None:
        if next(outcomes) == "reject":
            raise PermanentError("limits exceeded")
        accepted.append(message)

    await broker.subscriber(PAYMENT, config()).subscribe(FunctionHandler(handle))
    sent = payment()
    await broker.publisher().publish(sent)
    await broker.settle()
    [dead] = await broker.dead_letters().list()
    assert dead.dlq_sequence is not None
    replayed = await broker.dead_letters().replay(dead.dlq_sequence)
    assert not replayed.duplicate  # inside the original's duplicate window, still delivered
    with pytest.raises(AlreadyReplayedError):
        await broker.dead_letters().replay(dead.dlq_sequence)
    await broker.settle()
    assert [m.id for m in accepted] == [sent.id]  # the original id, once
    assert accepted[0].payload == sent.payload
    assert accepted[0].correlation_id == sent.correlation_id


async def test_a_dead_letter_older_than_the_dead_letter_max_age_cannot_be_replayed() -> None:
    clock = ManualClock()
    default = StreamCatalog.default()
    dead_spec = default.dead_letters
    catalog = StreamCatalog(default.streams, StreamSpec(dead_spec.name, dead_spec.subjects, 60.0))
    async with InMemoryBroker(clock=clock, catalog=catalog) as broker:

        async def reject(message: Message) -> None:
            raise PermanentError("unknown creditor")

        await broker.subscriber(PAYMENT, config()).subscribe(FunctionHandler(reject))
        await broker.publisher().publish(payment())
        await broker.settle()
        [dead] = await broker.dead_letters().list()
        assert dead.dlq_sequence is not None
        clock.advance(61.0)
        with pytest.raises(NotFoundError):
            await broker.dead_letters().replay(dead.dlq_sequence)
        assert await broker.dead_letters().list() == []


async def test_looking_up_what_does_not_exist_raises_not_found_errors_that_are_key_errors(
    broker: InMemoryBroker,
) -> None:
    await subscribe(broker, Recorder())  # the group "settlement" exists, on STREAM only
    with pytest.raises(KeyError) as dead_letter:
        await broker.dead_letters().replay(42)
    with pytest.raises(KeyError) as stream:
        broker.stream_info("NO_SUCH_STREAM")
    with pytest.raises(KeyError) as group:
        broker.consumer_info(STREAM, "nobody")
    with pytest.raises(KeyError) as elsewhere:
        broker.consumer_info("DEAD_LETTERS", config().consumer_name)
    found = [
        (caught.value.what, caught.value.key, str(caught.value))
        for caught in (dead_letter, stream, group, elsewhere)
        if isinstance(caught.value, NotFoundError)
    ]
    assert found == [
        ("dead letter", 42, "no dead letter 42"),
        ("stream", "NO_SUCH_STREAM", "no stream 'NO_SUCH_STREAM'"),
        ("consumer group", (STREAM, "nobody"), f"no consumer group ({STREAM!r}, 'nobody')"),
        (
            "consumer group",
            ("DEAD_LETTERS", config().consumer_name),
            f"no consumer group ('DEAD_LETTERS', {config().consumer_name!r})",
        ),
    ]


# -- closing ------------------------------------------------------------------------------


async def test_closing_the_broker_cancels_its_redelivery_timers(
    broker: InMemoryBroker, clock: ManualClock
) -> None:
    attempts: list[int] = []

    async def retry_later(message: Message) -> None:
        attempts.append(current_delivery().attempt)
        await current_delivery().nak(5.0)

    await broker.subscriber(PAYMENT, config()).subscribe(FunctionHandler(retry_later))
    await broker.publisher().publish(payment())
    await broker.settle()
    assert attempts == [1]
    assert clock.pending_timers > 0  # the NAK delay
    await broker.close()
    assert clock.pending_timers == 0
    clock.advance(60.0)
    await broker.settle()
    assert attempts == [1]


async def test_a_closed_broker_says_so_and_refuses_to_publish(broker: InMemoryBroker) -> None:
    publisher = broker.publisher()
    closed = [broker.closed]
    await broker.close()
    await broker.close()  # idempotent
    closed.append(broker.closed)
    assert closed == [False, True]
    with pytest.raises(ClosedError, match="broker closed"):
        await publisher.publish(payment())


# -- construction -------------------------------------------------------------------------


@pytest.mark.parametrize("window", [0, -1.0, True, "120"])
def test_a_bad_duplicate_window_is_rejected(window: Any) -> None:
    with pytest.raises(ValidationError, match="duplicate_window"):
        InMemoryBroker(duplicate_window=window)


async def test_settle_gives_up_on_a_handler_loop_that_never_ends(broker: InMemoryBroker) -> None:
    async def retry_forever(message: Message) -> None:
        await current_delivery().nak()

    subscriber = broker.subscriber(PAYMENT, config(max_deliver=10**9, max_concurrent=1))
    await subscriber.subscribe(FunctionHandler(retry_forever))
    await broker.publisher().publish(payment())
    with pytest.raises(TimeoutError, match="still busy"):
        await broker.settle(max_rounds=200)
