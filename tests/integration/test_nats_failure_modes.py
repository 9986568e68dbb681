"""The NATS adapter when things go wrong: outages, stalls, foreign replies, odd handlers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from message_bus import (
    BusConnectionError,
    DecodeError,
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PermanentError,
    PublishBatchError,
    PublisherConfig,
    PublishError,
    RetryableError,
    SubscriberConfig,
    Subscription,
    ValidationError,
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
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.codec import WireCodec
from message_bus.domain.dead_letter import encode_dead_letter
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
EVENT = MessageType.SYSTEM_EVENT
USD_EUR = PartitionKey.corridor("USD-EUR")
FAST = {"pull_expires": 2.0, "idle_heartbeat": 0.5}


def payment(n: int = 0, **payload: object) -> Message:
    return Message.new(
        PAYMENT,
        USD_EUR,
        sample_payload(
            MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="1.00", **payload
        ),
    )


def event(n: int = 0) -> Message:
    return Message.new(EVENT, PartitionKey.broadcast(), {"event": f"e{n}"})


async def connect(url: str, *, connection_timeout: float = 3.0) -> NatsClient:
    client = NatsClient(
        NatsConfig(
            urls=[url],
            reconnect_delay=0.05,
            reconnect_max_delay=0.2,
            connection_timeout=connection_timeout,
        )
    )
    await client.connect()
    return client


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await StreamManager(client).apply()
    yield client
    await client.close()


def subscriber(
    client: NatsClient, message_type: MessageType = PAYMENT, **config: object
) -> JetStreamSubscriber:
    settings = SubscriberConfig(**{"consumer_group": "workers", **config})  # type: ignore[arg-type]
    return JetStreamSubscriber(client, message_type, settings, **FAST)  # type: ignore[arg-type]


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def consumer_state(client: NatsClient, group: str = "workers") -> tuple[int, int]:
    """(deliveries so far, ack floor) of the group's consumer on PAYMENT_INSTRUCTIONS."""
    name = SubscriberConfig(consumer_group=group).consumer_name
    info = await client.jetstream.consumer_info("PAYMENT_INSTRUCTIONS", name)
    assert info.delivered is not None
    assert info.ack_floor is not None
    return int(info.delivered.consumer_seq or 0), int(info.ack_floor.stream_seq or 0)


@contextmanager
def frozen(server: EmbeddedNatsServer) -> Iterator[None]:
    """The server process stopped (not dead: its sockets stay open) for the block.

    ``kill`` returns before every thread of the server has stopped: a thread still
    running could answer what the block sends first. The block starts once each thread
    is in the stopped state.
    """
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 5.0
        while not _all_threads_stopped(pid):
            assert time.monotonic() < deadline, f"nats-server {pid} did not stop within 5 s"
            time.sleep(0.001)
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _all_threads_stopped(pid: int) -> bool:
    tasks = Path(f"/proc/{pid}/task")
    states = [(task / "stat").read_text().rsplit(")", 1)[1].split()[0] for task in tasks.iterdir()]
    return all(state in ("T", "t") for state in states)


# -- dead letters that cannot be stored --------------------------------------------------


async def test_a_dead_letter_that_cannot_be_stored_is_stored_once_the_stream_is_back(
    client: NatsClient,
) -> None:
    await client.jetstream.delete_stream("DEAD_LETTERS")
    runs: list[int] = []

    async def fail(message: Message) -> None:
        runs.append(current_delivery().attempt)
        raise RetryableError("bank API down", delay=0.05)

    await subscriber(client, max_deliver=2, nak_initial_delay=0.05, nak_max_delay=0.2).subscribe(
        FunctionHandler(fail)
    )
    message = payment()
    await JetStreamPublisher(client).publish(message)
    await eventually(lambda: len(runs) >= 2)
    # a few deliveries past the limit while the dead-letter stream is missing
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while (await consumer_state(client))[0] < 4:
        assert loop.time() < deadline, "the message stopped coming back"
        await asyncio.sleep(0.05)

    await StreamManager(client).apply()

    reader = JetStreamDeadLetters(client)
    deadline = loop.time() + 10.0
    while not (letters := await reader.list()):
        assert loop.time() < deadline, "the message was never dead-lettered"
        await asyncio.sleep(0.05)
    [letter] = letters
    assert letter.message.id == message.id
    assert letter.reason == "max deliveries (2) exhausted: bank API down"
    assert letter.deliveries == 2
    assert runs == [1, 2]


async def test_a_dead_letter_too_large_to_store_keeps_the_message_in_the_consumer(
    client: NatsClient,
) -> None:
    codec = BlockCodec()
    empty = codec.encode_block(payment(blob=""))
    fill = client.connection.max_payload - len(empty.header_block) - len(empty.body) - 50
    message = payment(blob="x" * fill)  # fits, with 50 bytes to spare; its dead letter does not
    await JetStreamPublisher(client).publish(message)

    async def reject(message: Message) -> None:
        raise PermanentError("bad instruction")

    await subscriber(client, max_deliver=1, nak_initial_delay=0.05, nak_max_delay=0.1).subscribe(
        FunctionHandler(reject)
    )

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while (state := await consumer_state(client))[0] < 4:
        assert loop.time() < deadline, f"the message stopped coming back: {state}"
        await asyncio.sleep(0.05)
    assert state[1] == 0  # never TERMed or acked
    assert await JetStreamDeadLetters(client).list() == []


# -- replay ----------------------------------------------------------------------------------


async def test_replaying_an_entry_that_names_a_foreign_subject_publishes_nothing(
    client: NatsClient,
) -> None:
    await JetStreamPublisher(client).publish(payment())
    nc = client.connection
    await nc.publish(
        "deltran.dlq.x",
        b"{}",
        headers={
            "Deltran-Dlq-Subject": "$JS.API.STREAM.DELETE.PAYMENT_INSTRUCTIONS",
            "Deltran-Dlq-Message-Id": "m1",
            "Nats-Msg-Id": "crafted",
        },
    )
    await client.flush()

    with pytest.raises(DecodeError):
        await JetStreamDeadLetters(client).replay(1)

    info = await client.jetstream.stream_info("PAYMENT_INSTRUCTIONS")
    assert info.state.messages == 1


async def test_replaying_a_dead_letter_of_a_core_only_type_is_refused(client: NatsClient) -> None:
    encoded = WireCodec().encode(event())
    dead = encode_dead_letter(
        encoded,
        reason="crafted",
        stream="NONE",
        sequence=1,
        deliveries=1,
        consumer_group="workers",
        failed_at=datetime.now(UTC),
    )
    await client.connection.publish(dead.subject, dead.body, headers=dict(dead.headers))
    await client.flush()

    with pytest.raises(ValidationError):
        await JetStreamDeadLetters(client).replay(1)


# -- publishing ------------------------------------------------------------------------------


async def test_a_reply_that_is_not_a_puback_fails_the_publish(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url)  # no streams: nothing stores payments
    try:

        async def impostor(msg: Msg) -> None:
            await msg.respond(b'{"ok": true}')

        await client.connection.subscribe("deltran.payment.instruction.>", cb=impostor)
        publisher = JetStreamPublisher(client)

        with pytest.raises(PublishError) as single:
            await publisher.publish(payment())
        with pytest.raises(PublishBatchError) as batch:
            await publisher.publish_many([payment(1), payment(2)])

        assert single.value.reason == "not_a_puback"
        assert not single.value.retryable
        assert [e.reason for e in batch.value.results] == ["not_a_puback"] * 2
    finally:
        await client.close()


async def test_a_publish_to_a_stalled_server_ends_within_its_timeout(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url, connection_timeout=2.0)
    try:
        await StreamManager(client).apply()
        publisher = JetStreamPublisher(
            client, PublisherConfig(publish_timeout=2.0, circuit_breaker_threshold=0)
        )
        await publisher.publish(payment())
        big = [payment(i, blob="x" * 400_000) for i in range(20)]

        with frozen(nats_server):
            async with asyncio.timeout(12.0):
                results = await asyncio.gather(
                    *(publisher.publish(m) for m in big), return_exceptions=True
                )

        assert all(isinstance(r, PublishError) for r in results), results
    finally:
        await client.close()


async def test_a_publish_while_the_client_drains_raises_a_bus_error(client: NatsClient) -> None:
    release = asyncio.Event()

    async def slow(msg: Msg) -> None:
        await asyncio.wait_for(release.wait(), 5.0)

    nc = client.connection
    await nc.subscribe("busy", cb=slow)
    await nc.publish("busy", b"")
    await client.flush()
    draining = asyncio.create_task(client.drain())
    try:
        await eventually(lambda: nc.is_draining)

        with pytest.raises(PublishError) as raised:
            await JetStreamPublisher(client).publish(payment())

        assert raised.value.reason in ("connection_draining", "connection_closed")
    finally:
        release.set()
        await draining


# -- consuming -------------------------------------------------------------------------------


async def test_a_group_whose_consumer_disappears_does_not_handle_acked_messages_again(
    client: NatsClient,
) -> None:
    seen: list[str] = []

    async def record(message: Message) -> None:
        seen.append(message.id)

    subscription = await subscriber(client, max_concurrent=4).subscribe(FunctionHandler(record))
    publisher = JetStreamPublisher(client)
    for i in range(20):
        await publisher.publish(payment(i))
    await eventually(lambda: len(seen) >= 20)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while (await consumer_state(client))[1] < 20:
        assert loop.time() < deadline, "the acks never reached the server"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.5)  # a few heartbeats: the subscription learns the ack floor

    name = SubscriberConfig(consumer_group="workers").consumer_name
    await client.jetstream.delete_consumer("PAYMENT_INSTRUCTIONS", name)
    last = payment(20)
    await publisher.publish(last)

    await eventually(lambda: last.id in seen)
    await subscription.stop()
    assert len(seen) == 21
    assert max(Counter(seen).values()) == 1


async def test_a_handler_raising_cancelled_error_costs_no_worker(client: NatsClient) -> None:
    seen: list[str] = []

    async def cancelled_once(message: Message) -> None:
        seen.append(message.id)
        if len(seen) == 1:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            await future

    subscription = await subscriber(client, max_concurrent=1, nak_initial_delay=0.05).subscribe(
        FunctionHandler(cancelled_once)
    )
    messages = [payment(i) for i in range(3)]
    for message in messages:
        await JetStreamPublisher(client).publish(message)

    await eventually(lambda: {m.id for m in messages} <= set(seen) and seen.count(seen[0]) == 2)
    async with asyncio.timeout(10.0):
        await subscription.stop()


async def test_stop_called_by_a_handler_completes_once_the_handler_returns(
    client: NatsClient,
) -> None:
    subscriptions: list[Subscription] = []
    returned = asyncio.Event()

    async def stop_myself(message: Message) -> None:
        await subscriptions[0].stop()
        returned.set()

    subscriptions.append(
        await subscriber(client, max_concurrent=2).subscribe(FunctionHandler(stop_myself))
    )
    await JetStreamPublisher(client).publish(payment())

    async with asyncio.timeout(10.0):
        await returned.wait()
        await subscriptions[0].stop()
    assert not subscriptions[0].active
    assert (await consumer_state(client))[1] == 1  # the handler's delivery was acked


async def test_stop_does_not_wait_forever_for_a_hung_handler(client: NatsClient) -> None:
    seen: list[int] = []

    async def hang(message: Message) -> None:
        seen.append(current_delivery().attempt)
        await asyncio.Event().wait()

    subscription = await subscriber(client, ack_wait=1.0).subscribe(FunctionHandler(hang))
    await JetStreamPublisher(client).publish(payment())
    await eventually(lambda: seen == [1])

    async with asyncio.timeout(12.0):
        await subscription.stop()

    retried: list[int] = []

    async def record(message: Message) -> None:
        retried.append(current_delivery().attempt)

    await subscriber(client, ack_wait=1.0).subscribe(FunctionHandler(record))
    await eventually(lambda: len(retried) == 1)
    assert retried[0] >= 2


async def test_a_core_subscription_that_failed_to_start_receives_nothing(
    nats_server: EmbeddedNatsServer,
) -> None:
    client = await connect(nats_server.url, connection_timeout=1.0)
    try:
        leaked: list[str] = []

        async def record_leak(message: Message) -> None:
            leaked.append(message.id)

        with frozen(nats_server), pytest.raises(BusConnectionError):
            await subscriber(client, EVENT, consumer_group="first").subscribe(
                FunctionHandler(record_leak)
            )

        seen: list[str] = []

        async def record(message: Message) -> None:
            seen.append(message.id)

        await subscriber(client, EVENT, consumer_group="second").subscribe(FunctionHandler(record))
        publisher = JetStreamPublisher(client)
        for i in range(5):
            await publisher.publish(event(i))
        await client.flush()
        await eventually(lambda: len(seen) == 5)
        await asyncio.sleep(0.2)  # the failed subscription's workers would have run by now

        assert leaked == []
    finally:
        await client.close()


async def test_stop_handles_a_fetched_delivery_on_its_last_attempt_instead_of_releasing_it(
    client: NatsClient, nats_server: EmbeddedNatsServer
) -> None:
    release = asyncio.Event()
    seen: list[str] = []

    async def slow_first(message: Message) -> None:
        seen.append(message.id)
        if len(seen) == 1:
            await asyncio.wait_for(release.wait(), 10.0)

    # max_deliver=1: every delivery is its last one.
    settings = SubscriberConfig(
        consumer_group="workers", max_concurrent=1, ack_wait=2.0, max_deliver=1
    )
    subscription = await JetStreamSubscriber(
        client, PAYMENT, settings, pull_expires=20.0, idle_heartbeat=0.5
    ).subscribe(FunctionHandler(slow_first))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    name = settings.consumer_name
    while (await client.jetstream.consumer_info("PAYMENT_INSTRUCTIONS", name)).num_waiting < 1:
        assert loop.time() < deadline, "no pull request reached the server"
        await asyncio.sleep(0.05)
    # Heartbeats stop while the server is frozen: the subscription asks again, while its
    # first pull request stays alive, so the second message is fetched and waits.
    with frozen(nats_server):
        await asyncio.sleep(3.0)
    await JetStreamPublisher(client).publish_many([payment(0), payment(1)])
    deadline = loop.time() + 10.0
    while (await consumer_state(client))[0] < 2:
        assert loop.time() < deadline, "the second message was not fetched"
        await asyncio.sleep(0.05)
    await client.flush()

    stopping = asyncio.create_task(subscription.stop())
    loop.call_later(0.3, release.set)  # once stop() has dealt with what waits
    async with asyncio.timeout(10.0):
        await stopping

    assert len(seen) == 2
    assert await JetStreamDeadLetters(client).list() == []


async def test_deliveries_fetched_beyond_free_slots_are_handled_once_and_within_max_concurrent(
    client: NatsClient, nats_server: EmbeddedNatsServer
) -> None:
    release = asyncio.Event()
    running = 0
    most_running = 0
    handled: list[str] = []

    async def held(message: Message) -> None:
        nonlocal running, most_running
        running += 1
        most_running = max(most_running, running)
        try:
            while not release.is_set():  # long work, reported as such
                await current_delivery().in_progress()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(release.wait(), 0.3)
        finally:
            running -= 1
        handled.append(message.id)

    async def record(message: Message) -> None:
        handled.append(message.id)

    settings = SubscriberConfig(consumer_group="workers", max_concurrent=2, ack_wait=2.0)
    busy = await JetStreamSubscriber(
        client, PAYMENT, settings, pull_expires=20.0, idle_heartbeat=0.5
    ).subscribe(FunctionHandler(held))
    name = settings.consumer_name
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while (await client.jetstream.consumer_info("PAYMENT_INSTRUCTIONS", name)).num_waiting < 1:
        assert loop.time() < deadline, "no pull request reached the server"
        await asyncio.sleep(0.05)
    # Heartbeats stop while the server is frozen: the subscription asks again, while its
    # first pull request stays alive on the server.
    with frozen(nats_server):
        await asyncio.sleep(3.0)
    published = [payment(n) for n in range(4)]
    await JetStreamPublisher(client).publish_many(published)
    deadline = loop.time() + 10.0
    while (await consumer_state(client))[0] < 4:  # two handlers held, two deliveries queued
        assert loop.time() < deadline, "the deliveries were not fetched"
        await asyncio.sleep(0.05)
    other = await subscriber(client, ack_wait=settings.ack_wait).subscribe(FunctionHandler(record))
    await asyncio.sleep(2 * settings.ack_wait)  # queued deliveries would have expired by now
    release.set()
    await eventually(lambda: len(handled) >= 4)
    await busy.stop()
    await other.stop()

    assert sorted(Counter(handled).values()) == [1, 1, 1, 1]
    assert most_running <= 2
