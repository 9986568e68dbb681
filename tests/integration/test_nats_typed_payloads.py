"""A payload that breaks its type's Struct never leaves the process, on a real nats-server."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from proxy import TcpProxy

from message_bus import Message, MessageType, PartitionKey, ValidationError
from message_bus.adapters.nats import JetStreamPublisher, NatsClient, NatsConfig, StreamManager
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
KEY = PartitionKey.corridor("USD-EUR")


@pytest.fixture
def proxy(nats_server: EmbeddedNatsServer) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", nats_server.port) as running:
        yield running


@pytest.fixture
async def client(proxy: TcpProxy) -> AsyncIterator[NatsClient]:
    connected = NatsClient(NatsConfig(urls=[proxy.url], connection_timeout=10.0))
    await connected.connect()
    await StreamManager(connected).apply()
    yield connected
    await connected.close()


async def test_refused_payloads_send_no_byte_and_the_valid_one_is_stored(
    client: NatsClient, proxy: TcpProxy
) -> None:
    publisher = JetStreamPublisher(client)
    bad = Message.new(PAYMENT, KEY, sample_payload(PAYMENT, payment_id="pay-bad", amount="-1"))
    also_bad = Message.new(
        PAYMENT, KEY, sample_payload(PAYMENT, payment_id="pay-worse", amount=None)
    )
    good = Message.new(PAYMENT, KEY, sample_payload(PAYMENT, payment_id="pay-good"))

    with pytest.raises(ValidationError) as caught:
        await publisher.publish(bad)
    assert (caught.value.field, str(caught.value.value)) == ("payload.amount", "-1")
    with pytest.raises(ValidationError):
        await publisher.publish_many([good, also_bad])
    request = Message.new(MessageType.RISK_ASSESSMENT, KEY, {"score": 2.0})
    with pytest.raises(ValidationError):
        await publisher.request(request, timeout=1.0)
    receipt = await publisher.publish(good)

    assert receipt.sequence == 1  # the batch holding also_bad stored nothing
    sent = bytes(proxy.seen_upstream)
    assert b"pay-good" in sent
    assert b"pay-bad" not in sent
    assert b"pay-worse" not in sent
    assert b"deltran.risk.assessment" not in sent
    await publisher.close()
