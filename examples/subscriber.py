"""Consume payment instructions: the original crate's "Basic Subscriber" example.

A handler's outcome decides the acknowledgement: return -> ACK; raise RetryableError
(or any exception) -> NAK and redelivery; raise PermanentError -> TERM and dead letter.

Runs on the in-memory bus by default (it publishes three payments itself so there is
something to receive); give a NATS server to consume there::

    python examples/subscriber.py
    python examples/subscriber.py nats://localhost:4222
"""

from __future__ import annotations

import asyncio
import os
import sys

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    PermanentError,
    SubscriberConfig,
    ValidationError,
)
from message_bus.app import load_settings, open_container
from message_bus.domain.payloads import PaymentInstruction


class MyHandler:
    """Prints every payment instruction; refuses those without an amount."""

    def __init__(self, expected: int) -> None:
        self.remaining = expected
        self.done = asyncio.Event()

    async def handle(self, message: Message) -> None:
        try:
            instruction = message.payload_as(PaymentInstruction)
        except ValidationError as exc:
            raise PermanentError(str(exc)) from None  # TERM: dead-lettered, never redelivered
        amount = f"{instruction.amount} {instruction.currency}"
        print(f"Received: {instruction.payment_id} {amount} (partition {message.partition})")
        self.remaining -= 1
        if self.remaining == 0:
            self.done.set()


async def main(url: str | None) -> None:
    backend = {"backend": "nats", "nats.urls": url} if url else {"backend": "memory"}
    async with open_container(load_settings(overrides=backend)) as bus:
        subscriber = await bus.subscriber(
            MessageType.PAYMENT_INSTRUCTION,
            SubscriberConfig(consumer_group="deltran-workers", durable_name="example"),
        )
        handler = MyHandler(expected=3)
        subscription = await subscriber.subscribe(handler)

        publisher = await bus.publisher()
        for n, corridor in enumerate(["USD-EUR", "GBP-USD", "EUR-JPY"]):
            key = PartitionKey.corridor(corridor)
            payload = {  # a dict of the type's fields, checked against its Struct at publish
                "payment_id": f"pay_{n}",
                "amount": f"{100 * (n + 1)}.00",
                "currency": corridor[:3],
                "debtor_bank": "BANKGB2L",
                "creditor_bank": "BANKDEFF",
                "corridor": corridor,
            }
            await publisher.publish(Message.new(MessageType.PAYMENT_INSTRUCTION, key, payload))

        await asyncio.wait_for(handler.done.wait(), timeout=10)
        await subscription.drain()  # finish and ack what was fetched, then stop
        await publisher.close()
        await subscriber.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DELTRAN_NATS_URLS")))
