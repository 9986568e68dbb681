"""A publish retry never outlives the duplicate window, on a real nats-server.

The PubAck of the first attempt is dropped on its way back (the TcpProxy discards
server-to-client bytes), so the publisher retries with the same ``Nats-Msg-Id``. Within
the window JetStream recognises the retry; after it, the retry is a second copy. So a
window shorter than the retry budget is refused: by the settings, by the publisher (once
per stream) and by ``streams apply``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest
from nats.js.api import StorageType, StreamConfig
from proxy import TcpProxy

from message_bus import Message, MessageType, PartitionKey, PublisherConfig
from message_bus.adapters.nats import (
    JetStreamPublisher,
    NatsClient,
    NatsConfig,
    RetryEvent,
    StreamManager,
)
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.adapters.nats.ordered_bucket import BUCKET_STREAM
from message_bus.adapters.nats.sender import RetryHook, Sender
from message_bus.app.cli import run_cli
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.errors import DuplicateWindowError
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
STREAM = "PAYMENT_INSTRUCTIONS"
KEY = PartitionKey.corridor("USD-EUR")
STREAM_INFO = f"$JS.API.STREAM.INFO.{STREAM}".encode()
# Three attempts within 6 s: each attempt waits 2 s for its PubAck, far longer than the
# short window below, so a retry after a lost PubAck always arrives after it closed.
RETRYING = PublisherConfig(
    publish_timeout=6.0, max_retry_attempts=3, initial_retry_delay=0.01, max_retry_delay=0.02
)
SHORT_WINDOW = 0.5


def payment(n: int) -> Message:
    return Message.new(
        PAYMENT,
        KEY,
        sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay_{n}", amount="10.00"),
    )


@pytest.fixture
def proxy(nats_server: EmbeddedNatsServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", nats_server.port) as running:
        yield running


@pytest.fixture
async def client(proxy: TcpProxy) -> AsyncIterator[NatsClient]:
    config = NatsConfig(urls=[proxy.url], reconnect_delay=0.05, connection_timeout=5.0)
    connected = NatsClient(config)
    await connected.connect()
    yield connected
    await connected.close()


async def apply(client: NatsClient, window: float) -> None:
    catalog = StreamCatalog({PAYMENT: StreamCatalog.default().streams[PAYMENT]})
    await StreamManager(client).apply(catalog, duplicate_window=window)


async def stored(client: NatsClient) -> int:
    info = await client.jetstream.stream_info(STREAM)
    return int(info.state.messages)


def lookups(proxy: TcpProxy) -> int:
    """Stream info requests sent so far (each publisher lookup is one)."""
    return proxy.seen_upstream.count(STREAM_INFO)


def heal_on_retry(proxy: TcpProxy, retries: list[RetryEvent]) -> RetryHook:
    """A retry hook that lets the PubAcks through again from the first retry on."""

    def hook(event: RetryEvent) -> None:
        retries.append(event)
        proxy.heal()

    return hook


async def test_a_retry_after_a_lost_puback_is_a_duplicate_within_an_accepted_window(
    client: NatsClient, proxy: TcpProxy
) -> None:
    await apply(client, RETRYING.min_duplicate_window)
    retries: list[RetryEvent] = []
    publisher = JetStreamPublisher(client, RETRYING, on_retry=heal_on_retry(proxy, retries))
    first = await publisher.publish(payment(0))  # connection and window check done
    message = payment(1)

    proxy.drop(downstream=True)  # the PubAck of the first attempt never arrives
    receipt = await asyncio.wait_for(publisher.publish(message), 30)

    assert [event.attempt for event in retries] == [1], "the first PubAck was not lost"
    assert receipt.duplicate, "the retry was stored as a new message"
    assert receipt.sequence == first.sequence + 1  # type: ignore[operator]
    assert await stored(client) == 2


async def test_a_retry_after_the_window_closed_is_stored_twice_which_is_why_it_is_refused(
    client: NatsClient, proxy: TcpProxy
) -> None:
    """What the refusal prevents, shown with the raw send path (no window check)."""
    await apply(client, SHORT_WINDOW)
    retries: list[RetryEvent] = []
    sender = Sender(client, RETRYING, heal_on_retry(proxy, retries))
    codec = BlockCodec()
    warm_up = payment(0)
    await sender.send(warm_up.id, codec.encode_block(warm_up), jetstream=True, message_type=PAYMENT)
    message = payment(1)

    proxy.drop(downstream=True)
    receipt = await asyncio.wait_for(
        sender.send(message.id, codec.encode_block(message), jetstream=True, message_type=PAYMENT),
        30,
    )

    assert [event.attempt for event in retries] == [1]
    assert not receipt.duplicate
    assert await stored(client) == 3, "one publish, one copy (the window outlived the retry)"


async def test_the_publisher_refuses_a_stream_whose_window_is_shorter_than_its_retry_budget(
    client: NatsClient, proxy: TcpProxy
) -> None:
    await apply(client, SHORT_WINDOW)
    publisher = JetStreamPublisher(client, RETRYING)
    before = lookups(proxy)

    for n in range(3):
        with pytest.raises(DuplicateWindowError) as caught:
            await publisher.publish(payment(n))
        error = caught.value
        assert (error.stream, error.duplicate_window) == (STREAM, SHORT_WINDOW)
        assert (error.publish_timeout, error.required) == (6.0, 12.0)
    with pytest.raises(DuplicateWindowError):
        await publisher.publish_many([payment(3), payment(4)])

    assert lookups(proxy) - before == 1, "the window was looked up per message"
    assert await stored(client) == 0, "a refused publish stored something"


async def test_the_window_is_looked_up_once_per_stream_and_publishes_go_on(
    client: NatsClient, proxy: TcpProxy
) -> None:
    await apply(client, 120.0)
    publisher = JetStreamPublisher(client, RETRYING)
    before = lookups(proxy)

    receipts = [await publisher.publish(payment(n)) for n in range(5)]
    receipts += await publisher.publish_many([payment(n) for n in range(5, 10)])

    assert [r.sequence for r in receipts] == list(range(1, 11))
    assert lookups(proxy) - before == 1


async def test_concurrent_first_publishes_share_one_lookup(
    client: NatsClient, proxy: TcpProxy
) -> None:
    await apply(client, 120.0)
    publisher = JetStreamPublisher(client, RETRYING)
    before = lookups(proxy)

    await asyncio.gather(*(publisher.publish(payment(n)) for n in range(20)))

    assert lookups(proxy) - before == 1
    assert await stored(client) == 20


async def test_streams_apply_reports_a_window_too_short_for_the_publishers(
    client: NatsClient,
) -> None:
    manager = StreamManager(client)

    reports = await manager.apply(duplicate_window=SHORT_WINDOW, publisher=RETRYING)

    assert {r.action for r in reports} == {"created"}
    streams = [r for r in reports if r.name != BUCKET_STREAM]  # the bucket keeps no ids
    assert len(streams) == len(reports) - 1
    for report in streams:
        assert len(report.problems) == 1, report
        assert report.problems[0].startswith("duplicate_window: duplicate window 0.5s")
        assert "12s" in report.problems[0]
    fixed = await manager.apply(duplicate_window=12.0, publisher=RETRYING)
    assert all(r.action == "updated" and not r.problems for r in fixed if r.name != BUCKET_STREAM)


async def test_streams_apply_reports_a_conflicting_stream_that_keeps_a_short_window(
    nats_server: EmbeddedNatsServer, client: NatsClient, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = StreamCatalog.default().streams[PAYMENT]
    await client.jetstream.add_stream(
        StreamConfig(
            name=STREAM,
            subjects=list(spec.subjects),
            storage=StorageType.MEMORY,  # storage cannot change in place: a conflict
            duplicate_window=SHORT_WINDOW,
        )
    )

    code = await run_cli(["streams", "apply", "--url", nats_server.url])

    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if line.startswith(STREAM))
    assert "conflict" in row
    assert "PROBLEMS" in out.splitlines()[0]
    assert "duplicate window 0.5s is shorter than 10s" in row
    assert code == 1
    assert STREAM in err
    assert len(err.strip().splitlines()) == 1


async def test_the_cli_refuses_settings_whose_window_is_shorter_than_the_timeout(
    nats_server: EmbeddedNatsServer,
    client: NatsClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DELTRAN_DUPLICATE_WINDOW", "0.5")
    monkeypatch.setenv("DELTRAN_PUBLISH_TIMEOUT", "6")

    code = await run_cli(["streams", "apply", "--url", nats_server.url])

    err = capsys.readouterr().err
    assert code == 2
    assert "DELTRAN_DUPLICATE_WINDOW" in err
    assert "DELTRAN_PUBLISH_TIMEOUT" in err
    streams = await client.jetstream.streams_info()
    assert streams == [], "streams were applied with a refused configuration"


async def test_a_stream_created_after_a_failed_lookup_is_checked_by_a_later_publish(
    client: NatsClient,
) -> None:
    publisher = JetStreamPublisher(client, RETRYING)
    with pytest.raises(Exception, match="no_stream"):
        await publisher.publish(payment(0))  # no stream yet: nothing to check, not cached
    await apply(client, SHORT_WINDOW)

    with pytest.raises(DuplicateWindowError):
        await publisher.publish(payment(1))
    assert await stored(client) == 0
