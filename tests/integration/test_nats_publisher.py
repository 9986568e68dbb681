"""The JetStream publisher against a real nats-server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from nats.js.api import DiscardPolicy, StreamConfig

from message_bus import (
    CircuitOpenError,
    FunctionHandler,
    Message,
    MessageType,
    NoRespondersError,
    PartitionKey,
    PublishBatchError,
    PublisherConfig,
    PublishError,
    PublishReceipt,
    PublishTimeout,
    RequestTimeout,
    SubscriberConfig,
    ValidationError,
)
from message_bus.adapters.nats import (
    JetStreamPublisher,
    JetStreamSubscriber,
    NatsClient,
    NatsConfig,
    RetryEvent,
    StreamManager,
)
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
NETTING = MessageType.NETTING_PROPOSAL
USD_EUR = PartitionKey.corridor("USD-EUR")


def payment(n: int = 0, key: PartitionKey = USD_EUR) -> Message:
    return Message.new(
        PAYMENT,
        key,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


def netting(n: int = 0) -> Message:
    return Message.new(NETTING, USD_EUR, sample_payload(NETTING, cycle_id=f"cycle_{n}"))


async def connect(url: str, **options: object) -> NatsClient:
    config = NatsConfig(
        urls=[url], reconnect_delay=0.05, reconnect_max_delay=0.2, connection_timeout=3.0
    )
    if options:
        config = NatsConfig(**{**_fields(config), **options})  # type: ignore[arg-type]
    client = NatsClient(config)
    await client.connect()
    return client


def _fields(config: NatsConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.__dataclass_fields__}


@pytest.fixture
async def client(nats_server: EmbeddedNatsServer) -> AsyncIterator[NatsClient]:
    client = await connect(nats_server.url)
    await StreamManager(client).apply()
    yield client
    await client.close()


async def stored_ids(client: NatsClient, stream: str) -> list[str]:
    info = await client.jetstream.stream_info(stream)
    ids = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        stored = await client.jetstream.get_msg(stream, seq)
        assert stored.headers is not None
        ids.append(stored.headers["Nats-Msg-Id"])
    return ids


async def replace_stream(client: NatsClient, config: StreamConfig) -> None:
    assert config.name is not None
    await client.jetstream.delete_stream(config.name)
    await client.jetstream.add_stream(config)


async def test_publish_returns_the_streams_receipt(client: NatsClient) -> None:
    message = payment()

    receipt = await JetStreamPublisher(client).publish(message)

    assert receipt == PublishReceipt(
        message_id=message.id,
        subject="deltran.payment.instruction.corridor.USD-EUR",
        stream="PAYMENT_INSTRUCTIONS",
        sequence=1,
        duplicate=False,
        partition=message.partition_key.partition_number(32),
    )
    assert await stored_ids(client, "PAYMENT_INSTRUCTIONS") == [message.id]


async def test_publishing_the_same_message_twice_stores_it_once(client: NatsClient) -> None:
    publisher = JetStreamPublisher(client)
    message = payment()

    first = await publisher.publish(message)
    second = await publisher.publish(message)

    assert (first.sequence, first.duplicate) == (1, False)
    assert (second.sequence, second.duplicate) == (1, True)
    assert await stored_ids(client, "PAYMENT_INSTRUCTIONS") == [message.id]


async def test_a_message_that_cannot_be_encoded_is_rejected_before_any_io(
    client: NatsClient,
) -> None:
    bad = Message.new(PAYMENT, USD_EUR, {"amount": object()})

    with pytest.raises(ValidationError):
        await JetStreamPublisher(client).publish_many([payment(1), bad])

    info = await client.jetstream.stream_info("PAYMENT_INSTRUCTIONS")
    assert info.state.messages == 0


async def test_a_core_only_type_reaches_live_subscribers_without_a_stream(
    client: NatsClient,
) -> None:
    received: list[Message] = []

    async def handle(message: Message) -> None:
        received.append(message)

    subscriber = JetStreamSubscriber(client, MessageType.SYSTEM_EVENT)
    await subscriber.subscribe(FunctionHandler(handle))
    event = Message.new(MessageType.SYSTEM_EVENT, PartitionKey.broadcast(), {"event": "cutoff"})

    receipt = await JetStreamPublisher(client).publish(event)

    assert (receipt.stream, receipt.sequence) == (None, None)
    await _eventually(lambda: len(received) == 1)
    assert received[0].id == event.id
    await subscriber.close()


async def test_a_full_stream_fails_at_once_without_retries(client: NatsClient) -> None:
    await replace_stream(
        client,
        StreamConfig(
            name="PAYMENT_INSTRUCTIONS",
            subjects=["deltran.payment.instruction.>"],
            max_msgs=1,
            discard=DiscardPolicy.NEW,
        ),
    )
    retries: list[RetryEvent] = []
    publisher = JetStreamPublisher(client, on_retry=retries.append)
    await publisher.publish(payment(1))

    with pytest.raises(PublishError) as caught:
        await publisher.publish(payment(2))

    assert caught.value.reason == "stream_full"
    assert caught.value.retryable is False
    assert "maximum messages exceeded" in caught.value.detail
    assert retries == []


async def test_a_message_over_the_servers_max_payload_fails_without_breaking_the_connection(
    client: NatsClient,
) -> None:
    retries: list[RetryEvent] = []
    publisher = JetStreamPublisher(client, on_retry=retries.append)
    limit = client.connection.max_payload

    with pytest.raises(PublishError) as caught:
        await publisher.publish(_big_payment(limit))

    assert caught.value.reason == "message_too_large"
    assert caught.value.retryable is False
    assert retries == []
    assert (await publisher.publish(payment(2))).sequence == 1


def _big_payment(size: int) -> Message:
    return Message.new(PAYMENT, USD_EUR, sample_payload(PAYMENT, blob="x" * size))


async def test_a_message_over_the_streams_size_limit_fails_at_once(client: NatsClient) -> None:
    await replace_stream(
        client,
        StreamConfig(
            name="PAYMENT_INSTRUCTIONS",
            subjects=["deltran.payment.instruction.>"],
            max_msg_size=256,
        ),
    )

    with pytest.raises(PublishError) as caught:
        await JetStreamPublisher(client).publish(_big_payment(1000))

    assert caught.value.reason == "message_too_large"
    assert caught.value.retryable is False


async def test_a_subject_no_stream_captures_fails_at_once_as_no_stream(
    client: NatsClient,
) -> None:
    await client.jetstream.delete_stream("NETTING_PROPOSALS")
    retries: list[RetryEvent] = []

    with pytest.raises(PublishError) as caught:
        await JetStreamPublisher(client, on_retry=retries.append).publish(netting())

    assert caught.value.reason == "no_stream"
    assert caught.value.retryable is False
    assert retries == []


async def test_a_publish_rides_out_a_server_restart_and_retries_under_the_same_id(
    nats_server: EmbeddedNatsServer, client: NatsClient
) -> None:
    retries: list[RetryEvent] = []
    config = PublisherConfig(publish_timeout=15.0, max_retry_attempts=8, max_retry_delay=0.3)
    publisher = JetStreamPublisher(client, config, on_retry=retries.append)
    message = payment()
    await asyncio.to_thread(nats_server.kill)

    publishing = asyncio.create_task(publisher.publish(message))
    await _eventually(lambda: len(retries) >= 1)
    await asyncio.to_thread(nats_server.restart)
    receipt = await asyncio.wait_for(publishing, 15.0)

    assert receipt.sequence == 1
    assert {event.message_id for event in retries} == {message.id}
    assert await stored_ids(client, "PAYMENT_INSTRUCTIONS") == [message.id]
    assert (await publisher.publish(message)).duplicate is True


async def test_a_publish_times_out_when_the_server_stays_down(
    nats_server: EmbeddedNatsServer, client: NatsClient
) -> None:
    retries: list[RetryEvent] = []
    config = PublisherConfig(publish_timeout=1.2, max_retry_attempts=3, circuit_breaker_threshold=0)
    publisher = JetStreamPublisher(client, config, on_retry=retries.append)
    await asyncio.to_thread(nats_server.kill)

    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(PublishError) as caught:
        await publisher.publish(payment())
    elapsed = loop.time() - start

    assert caught.value.retryable is True
    assert caught.value.reason in {"disconnected", "timeout"}
    assert elapsed < config.publish_timeout + 1.0, f"the publish took {elapsed:.2f}s"
    # Whether an attempt is made depends on whether the client saw the disconnect yet
    # (while reconnecting a publish waits for the connection, within its deadline).
    assert [event.attempt for event in retries] == list(range(1, len(retries) + 1))


async def test_an_unacknowledged_publish_raises_publish_timeout(client: NatsClient) -> None:
    # A subscriber on the subject stands in for a stream that never acknowledges.
    await client.jetstream.delete_stream("NETTING_PROPOSALS")
    silent = await client.connection.subscribe("deltran.netting.proposal.>")
    config = PublisherConfig(publish_timeout=0.5, max_retry_attempts=2)

    with pytest.raises(PublishTimeout) as caught:
        await JetStreamPublisher(client, config).publish(netting())

    assert caught.value.reason == "timeout"
    assert isinstance(caught.value, TimeoutError)
    await silent.unsubscribe()


async def test_the_circuit_breaker_fails_fast_while_the_server_is_down_and_recovers(
    nats_server: EmbeddedNatsServer, client: NatsClient
) -> None:
    config = PublisherConfig(
        publish_timeout=0.3,
        max_retry_attempts=2,
        circuit_breaker_threshold=2,
        circuit_breaker_cooldown=0.5,
    )
    publisher = JetStreamPublisher(client, config)
    await asyncio.to_thread(nats_server.kill)
    for n in range(2):
        with pytest.raises(PublishError) as failed:
            await publisher.publish(payment(n))
        assert not isinstance(failed.value, CircuitOpenError)

    with pytest.raises(CircuitOpenError) as caught:
        await publisher.publish(payment(3))
    assert 0 < caught.value.retry_after <= 0.5
    assert publisher.breaker.state == "open"

    await asyncio.to_thread(nats_server.restart)
    assert await client.wait_connected(10.0)
    await _eventually(lambda: publisher.breaker.state == "half_open")
    receipt = await publisher.publish(payment(4))

    assert receipt.stream == "PAYMENT_INSTRUCTIONS"
    assert publisher.breaker.state == "closed"


async def test_publish_many_returns_receipts_in_input_order(client: NatsClient) -> None:
    messages = [payment(n) for n in range(300)] + [netting(n) for n in range(5)]
    publisher = JetStreamPublisher(client, PublisherConfig(max_in_flight=16))

    receipts = await publisher.publish_many(messages)

    assert [r.message_id for r in receipts] == [m.id for m in messages]
    assert [r.sequence for r in receipts] == [*range(1, 301), *range(1, 6)]
    assert await stored_ids(client, "PAYMENT_INSTRUCTIONS") == [m.id for m in messages[:300]]


async def test_publish_many_reports_each_failure_without_hanging(client: NatsClient) -> None:
    await replace_stream(
        client,
        StreamConfig(
            name="NETTING_PROPOSALS",
            subjects=["deltran.netting.proposal.>"],
            max_msgs=2,
            discard=DiscardPolicy.NEW,
        ),
    )
    messages = [m for n in range(10) for m in (payment(n), netting(n))]
    retries: list[RetryEvent] = []
    config = PublisherConfig(max_in_flight=4)
    publisher = JetStreamPublisher(client, config, on_retry=retries.append)

    with pytest.raises(PublishBatchError) as caught:
        await asyncio.wait_for(publisher.publish_many(messages), 10.0)

    results = caught.value.results
    assert len(results) == len(messages)
    accepted = [r for r in results if isinstance(r, PublishReceipt)]
    assert {r.stream for r in accepted[:2]} == {"PAYMENT_INSTRUCTIONS", "NETTING_PROPOSALS"}
    assert sum(r.stream == "NETTING_PROPOSALS" for r in accepted) == 2
    assert sum(r.stream == "PAYMENT_INSTRUCTIONS" for r in accepted) == 10
    assert {e.reason for e in caught.value.errors} == {"stream_full"}
    assert [e.message_id for e in caught.value.errors] == [m.id for m in messages[5::2]]
    assert retries == []


async def test_publish_many_resolves_a_batch_for_a_missing_stream_at_once(
    client: NatsClient,
) -> None:
    await client.jetstream.delete_stream("NETTING_PROPOSALS")
    messages = [payment(1), netting(1), payment(2)]

    with pytest.raises(PublishBatchError) as caught:
        await asyncio.wait_for(JetStreamPublisher(client).publish_many(messages), 5.0)

    first, missing, last = caught.value.results
    assert isinstance(first, PublishReceipt)
    assert isinstance(last, PublishReceipt)
    assert isinstance(missing, PublishError)
    assert missing.reason == "no_stream"


async def test_a_request_without_responders_fails_at_once(client: NatsClient) -> None:
    request = Message.new(MessageType.RISK_ASSESSMENT, USD_EUR, {"payment_id": "pay_1"})

    with pytest.raises(NoRespondersError):
        await asyncio.wait_for(JetStreamPublisher(client).request(request, timeout=5.0), 1.0)


async def test_a_request_gets_the_responders_reply(client: NatsClient) -> None:
    async def assess(message: Message) -> Message:
        return message.reply(MessageType.RISK_ASSESSMENT, {"decision": "approve"})

    responder = JetStreamSubscriber(
        client, MessageType.RISK_ASSESSMENT, SubscriberConfig(consumer_group="risk-engine")
    )
    await responder.subscribe(FunctionHandler(assess))
    request = Message.new(MessageType.RISK_ASSESSMENT, USD_EUR, {"payment_id": "pay_1"})

    reply = await JetStreamPublisher(client).request(request, timeout=5.0)

    assert reply.payload == {"decision": "approve"}
    assert reply.causation_id == request.id
    assert reply.correlation_id == request.id
    await responder.close()


async def test_a_request_nobody_answers_in_time_raises_request_timeout(
    client: NatsClient,
) -> None:
    silent = await client.connection.subscribe("deltran.compliance.check.>")
    request = Message.new(MessageType.COMPLIANCE_CHECK, USD_EUR, {"payment_id": "pay_1"})

    with pytest.raises(RequestTimeout):
        await JetStreamPublisher(client).request(request, timeout=0.3)
    await silent.unsubscribe()


async def test_a_request_on_a_stream_backed_type_is_refused(client: NatsClient) -> None:
    with pytest.raises(ValidationError) as caught:
        await JetStreamPublisher(client).request(payment(), timeout=1.0)

    assert caught.value.field == "message_type"


async def test_a_publish_the_server_does_not_permit_fails_at_once(
    nats_server_factory: Callable[..., EmbeddedNatsServer], tmp_path: Path
) -> None:
    config_file = tmp_path / "restricted.conf"
    config_file.write_text(
        "jetstream { sync_interval: always }\n"
        "authorization {\n"
        "  users = [\n"
        '    { user: app, password: secret, permissions: { publish: { allow: [">"],'
        ' deny: ["deltran.payment.instruction.>"] } } }\n'
        "  ]\n"
        "}\n"
    )
    server = nats_server_factory(config_file=config_file)
    client = await connect(server.url, user="app", password="secret")
    try:
        await StreamManager(client).apply()
        publisher = JetStreamPublisher(client, PublisherConfig(publish_timeout=10.0))

        with pytest.raises(PublishError) as caught:
            await asyncio.wait_for(publisher.publish(payment()), 2.0)

        assert caught.value.reason == "permission_denied"
        assert caught.value.retryable is False
        assert (await publisher.publish(netting())).stream == "NETTING_PROPOSALS"
    finally:
        await client.close()


async def _eventually(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
