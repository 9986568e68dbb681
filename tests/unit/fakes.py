"""Recording fakes of the ports, for testing decorators: they record what reached them."""

from __future__ import annotations

from message_bus import Message, MessageType, PublishReceipt
from message_bus.ports import (
    Delivery,
    MessageHandler,
    Publisher,
    Subscriber,
    SubscriberConfig,
    Subscription,
    run_handler,
)

STREAM = "PAYMENT_INSTRUCTIONS"


class RecordingPublisher(Publisher):
    """Records what reaches the broker; fails the ids it is told to fail, and requests with
    ``request_error`` if set."""

    def __init__(self, *, duplicate: bool = False) -> None:
        self.published: list[Message] = []
        self.requests: list[Message] = []
        self.failures: dict[str, Exception] = {}
        self.request_error: Exception | None = None
        self.duplicate = duplicate
        self.closed = False

    async def publish(self, message: Message) -> PublishReceipt:
        if message.id in self.failures:
            raise self.failures[message.id]
        self.published.append(message)
        return PublishReceipt(
            message.id,
            message.subject,
            STREAM,
            len(self.published),
            duplicate=self.duplicate,
            partition=message.partition_key.partition_number(),
        )

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        self.requests.append(message)
        if self.request_error is not None:
            raise self.request_error
        return message.reply(message.message_type, {"approved": True})

    async def close(self) -> None:
        self.closed = True


class FakeDelivery(Delivery):
    """A delivery that records how it was settled (stream sequence 7, if from a stream)."""

    def __init__(self, message: Message, attempt: int, stream: str | None = STREAM) -> None:
        self.message = message
        self.attempt = attempt
        self.stream = stream
        self.sequence = 7 if stream is not None else None
        self.subject = message.subject
        self.actions: list[str] = []

    @property
    def settled(self) -> bool:
        return bool(self.actions)

    async def ack(self) -> None:
        self.actions.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.actions.append("nak")

    async def term(self, reason: str) -> None:
        self.actions.append("term")

    async def in_progress(self) -> None:
        return None


class NoSubscription(Subscription):
    @property
    def active(self) -> bool:
        return True

    async def stop(self) -> None:
        return None

    async def drain(self) -> None:
        return None


class DeliveringSubscriber(Subscriber):
    """Hands each delivery to the subscribed handler through the real ``run_handler``."""

    def __init__(self, config: SubscriberConfig | None = None) -> None:
        self.message_type = MessageType.PAYMENT_INSTRUCTION
        self.config = config or SubscriberConfig()
        self.handler: MessageHandler | None = None
        self.closed = False

    async def subscribe(self, handler: MessageHandler) -> Subscription:
        self.handler = handler
        return NoSubscription()

    async def deliver(
        self, message: Message, *, attempt: int = 1, stream: str | None = STREAM
    ) -> str:
        assert self.handler is not None
        return await run_handler(self.handler, FakeDelivery(message, attempt, stream), self.config)

    async def close(self) -> None:
        self.closed = True
