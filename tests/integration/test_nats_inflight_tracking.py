"""What a pull subscription tracks by stream sequence, on a real nats-server: a re-created
stream's messages are never taken for the old ones, a NAKed delivery is redelivered as a
new one, a superseding redelivery counts its attempt, nothing is fetched for a busy
slot, and ``max_handler_time`` is enforced at its deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

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
    JetStreamDeadLetters,
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    StreamManager,
)
from message_bus.adapters.nats.subscriber.pull import PullSubscription
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
KEY = PartitionKey.corridor("USD-EUR")
GROUP = "tracking"


def payment(name: str) -> Message:
    return Message.new(
        PAYMENT,
        KEY,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=name, amount="10.00"),
    )


def subscriber(
    client: NatsClient, *, pull_expires: float = 2.0, **settings: object
) -> JetStreamSubscriber:
    config = SubscriberConfig(consumer_group=GROUP, **settings)  # type: ignore[arg-type]
    return JetStreamSubscriber(
        client, PAYMENT, config, pull_expires=pull_expires, idle_heartbeat=0.5
    )


async def until(predicate: Callable[[], Awaitable[bool] | bool], what: str, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert loop.time() < deadline, f"timed out after {timeout} s waiting for {what}"
        await asyncio.sleep(0.05)


async def ack_pending(client: NatsClient) -> int:
    name = SubscriberConfig(consumer_group=GROUP).consumer_name
    info = await client.jetstream.consumer_info(STREAM, name)
    return info.num_ack_pending or 0


async def settled_up_to(client: NatsClient, sequence: int) -> bool:
    """Whether the group acked everything up to ``sequence`` and nothing is pending."""
    return await ack_pending(client) == 0 and await acked_up_to(client, sequence)


async def acked_up_to(client: NatsClient, sequence: int) -> bool:
    name = SubscriberConfig(consumer_group=GROUP).consumer_name
    info = await client.jetstream.consumer_info(STREAM, name)
    return (info.ack_floor.stream_seq or 0) >= sequence


# -- a re-created stream -----------------------------------------------------------------


async def test_a_retried_message_of_a_re_created_stream_is_handled_not_taken_for_an_acked_one(
    client: NatsClient,
) -> None:
    """The new stream starts again at sequence 1, which the subscription acked on the old
    one: the redelivery of the new message after its retryable failure must run."""
    calls: list[tuple[str, int]] = []

    async def handle(message: Message) -> None:
        name = message.payload["payment_id"]
        calls.append((name, current_delivery().attempt))
        if name == "pay_new" and current_delivery().attempt == 1:
            raise RetryableError("ledger busy", delay=0.0)

    subscription = await subscriber(client, ack_wait=30.0, nak_initial_delay=0.0).subscribe(
        FunctionHandler(handle)
    )
    assert isinstance(subscription, PullSubscription)
    publisher = JetStreamPublisher(client)
    try:
        assert (await publisher.publish(payment("pay_old"))).sequence == 1
        await until(lambda: acked_up_to(client, 1), "the old stream's message acked", 20.0)
        await client.jetstream.delete_stream(STREAM)
        await StreamManager(client).apply()
        assert (await publisher.publish(payment("pay_new"))).sequence == 1
        await until(
            lambda: ("pay_new", 2) in calls, "the retry of the new stream's message to run", 30.0
        )
        assert subscription.reacked == 0
        await until(lambda: settled_up_to(client, 1), "its ACK", 20.0)
        assert calls == [("pay_old", 1), ("pay_new", 1), ("pay_new", 2)]
    finally:
        await subscription.stop()


async def test_an_old_streams_handler_returning_late_does_not_swallow_the_new_streams_retry(
    client: NatsClient,
) -> None:
    """A handler of the old stream's sequence 1 still runs when the new stream's sequence 1
    arrives, fails and is retried: the old handler's late return (and ACK) is not taken
    for the new message's, so the retry runs."""
    calls: list[tuple[str, int]] = []
    release = asyncio.Event()

    async def handle(message: Message) -> None:
        name = message.payload["payment_id"]
        calls.append((name, current_delivery().attempt))
        if name == "pay_old":
            await asyncio.wait_for(release.wait(), 60.0)
        elif current_delivery().attempt == 1:
            release.set()  # the old handler returns while this one waits for its retry
            raise RetryableError("ledger busy", delay=2.0)

    subscription = await subscriber(client, ack_wait=30.0, max_concurrent=4).subscribe(
        FunctionHandler(handle)
    )
    assert isinstance(subscription, PullSubscription)
    publisher = JetStreamPublisher(client)
    try:
        await publisher.publish(payment("pay_old"))
        await until(lambda: ("pay_old", 1) in calls, "the old stream's message to start", 20.0)
        await client.jetstream.delete_stream(STREAM)
        await StreamManager(client).apply()
        assert (await publisher.publish(payment("pay_new"))).sequence == 1
        await until(lambda: ("pay_new", 2) in calls, "the new stream's message's retry", 30.0)
        assert subscription.reacked == 0
        assert subscription.superseded == 0
    finally:
        release.set()
        await subscription.stop()


# -- an explicit NAK while the handler goes on -------------------------------------------


@pytest.mark.parametrize("delay", [0.0, 1.0])
async def test_an_explicit_nak_is_redelivered_after_its_delay_while_the_handler_goes_on(
    client: NatsClient, delay: float
) -> None:
    """The handler NAKs, then keeps working: the redelivery is a new delivery (attempt 2),
    after the NAK's delay, not held back until the first handler returns plus ack_wait."""
    started: dict[int, float] = {}
    naked_at: list[float] = []
    second = asyncio.Event()

    async def handle(message: Message) -> None:
        delivery = current_delivery()
        started[delivery.attempt] = time.monotonic()
        if delivery.attempt == 1:
            await delivery.nak(delay)
            naked_at.append(time.monotonic())
            await asyncio.wait_for(second.wait(), 30.0)  # post-processing
        else:
            second.set()

    subscription = await subscriber(client, ack_wait=10.0, max_concurrent=4).subscribe(
        FunctionHandler(handle)
    )
    assert isinstance(subscription, PullSubscription)
    try:
        await JetStreamPublisher(client).publish(payment("pay_nak"))
        await until(
            lambda: 2 in started,
            "the NAKed delivery's redelivery while its first handler runs",
            25.0,
        )
        waited = started[2] - naked_at[0]
        assert waited >= delay - 0.1, f"redelivered {waited:.2f} s after a NAK of {delay} s"
        await until(lambda: settled_up_to(client, 1), "the second delivery's ACK", 20.0)
        assert sorted(started) == [1, 2]
        assert subscription.superseded == 0
    finally:
        second.set()
        await subscription.stop()


# -- a superseding redelivery counts its attempt -----------------------------------------


async def test_a_failure_after_a_superseding_last_delivery_is_dead_lettered_with_its_reason(
    client: NatsClient,
) -> None:
    """The event loop stalls past ack_wait, so the server redelivers (attempt 2, the last
    allowed) while the handler runs; the handler then fails: that failure is the last
    delivery's, dead-lettered with the handler's own reason."""
    attempts_at_failure: list[int] = []
    subscription: PullSubscription | None = None

    async def handle(message: Message) -> None:
        delivery = current_delivery()
        if delivery.attempt == 1:
            time.sleep(1.5)  # noqa: ASYNC251  # a stalled event loop (a CPU-bound step): no +WPI
            assert subscription is not None
            await until(lambda: subscription.superseded > 0, "the redelivery to arrive", 20.0)
        attempts_at_failure.append(delivery.attempt)
        raise ValueError("business rule failed")

    subscribed = await subscriber(
        client, ack_wait=1.0, max_deliver=2, nak_initial_delay=0.0
    ).subscribe(FunctionHandler(handle))
    assert isinstance(subscribed, PullSubscription)
    subscription = subscribed
    try:
        sent = payment("pay_rule")
        await JetStreamPublisher(client).publish(sent)
        reader = JetStreamDeadLetters(client)

        async def stored() -> bool:
            return bool(await reader.list())

        await until(stored, "the dead letter", 30.0)
        [letter] = await reader.list()
        assert letter.message is not None
        assert letter.message.id == sent.id
        assert "business rule failed" in letter.reason, letter.reason
        assert len(attempts_at_failure) == 1
        assert letter.deliveries == attempts_at_failure[0] >= 2
    finally:
        await subscribed.stop()


# -- nothing fetched for a busy slot -----------------------------------------------------


async def test_a_member_with_a_long_handler_fetches_nothing_that_another_member_could_handle(
    client: NatsClient,
) -> None:
    """A's only slot runs a handler for longer than ack_wait: a message published then is
    handled by idle member B, not parked in A behind the long handler."""
    log: list[tuple[str, str]] = []
    release = asyncio.Event()

    def handler(member: str) -> FunctionHandler:
        async def handle(message: Message) -> None:
            name = message.payload["payment_id"]
            log.append((member, name))
            if name == "pay_long":
                await asyncio.wait_for(release.wait(), 60.0)

        return FunctionHandler(handle)

    settings = {"ack_wait": 1.0, "max_concurrent": 1, "max_handler_time": 60.0}
    a = await subscriber(client, pull_expires=10.0, **settings).subscribe(handler("A"))
    b = None
    try:
        publisher = JetStreamPublisher(client)
        await publisher.publish(payment("pay_long"))
        await until(lambda: ("A", "pay_long") in log, "A to start the long handler", 20.0)
        await asyncio.sleep(2.5)  # the handler runs past ack_wait (time itself is the point)
        b = await subscriber(client, pull_expires=10.0, **settings).subscribe(handler("B"))
        await publisher.publish(payment("pay_short"))
        await until(
            lambda: any(name == "pay_short" for _, name in log),
            "the second message to be handled while A's handler runs",
            20.0,
        )
        assert ("B", "pay_short") in log
    finally:
        release.set()
        await a.stop()
        if b is not None:
            await b.stop()


# -- max_handler_time at its deadline ----------------------------------------------------


async def test_a_max_handler_time_far_below_ack_wait_cuts_the_handler_at_its_deadline(
    client: NatsClient,
) -> None:
    durations: list[float] = []

    async def hang(message: Message) -> None:
        began = time.monotonic()
        try:
            await asyncio.sleep(60)
        finally:
            durations.append(time.monotonic() - began)

    subscription = await subscriber(
        client, ack_wait=20.0, max_handler_time=0.3, max_deliver=1
    ).subscribe(FunctionHandler(hang))
    try:
        await JetStreamPublisher(client).publish(payment("pay_hang"))
        await until(lambda: bool(durations), "the handler to be cut off", 30.0)
        assert 0.25 <= durations[0] < 2.0, f"cut off after {durations[0]:.2f} s, limit 0.3 s"
    finally:
        await subscription.stop()
