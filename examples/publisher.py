"""Publish a payment instruction: the original crate's "Basic Publisher" example.

Runs on the in-memory bus by default; give a NATS server to publish there (its streams
must exist: ``deltran-bus server`` or ``deltran-bus streams apply`` creates them)::

    python examples/publisher.py
    python examples/publisher.py nats://localhost:4222
    DELTRAN_NATS_URLS=nats://localhost:4222 python examples/publisher.py
"""

from __future__ import annotations

import asyncio
import os
import sys
from decimal import Decimal

from message_bus import Message, MessageType, PartitionKey
from message_bus.app import load_settings, open_container
from message_bus.domain.payloads import PaymentInstruction


async def main(url: str | None) -> None:
    # Connect: the container builds the client and the publisher from the settings.
    backend = {"backend": "nats", "nats.urls": url} if url else {"backend": "memory"}
    async with open_container(load_settings(overrides=backend)) as bus:
        publisher = await bus.publisher()

        # Publish a message: keyed by corridor, so it lands on that corridor's partition.
        # The payload is the type's Struct (a dict of its fields works too); publish
        # checks it before anything is sent.
        instruction = PaymentInstruction(
            payment_id="pay_123",
            amount=Decimal("1000.00"),
            currency="USD",
            debtor_bank="BANKUS33",
            creditor_bank="BANKDEFF",
            corridor="USD-EUR",
        )
        message = Message.new(
            MessageType.PAYMENT_INSTRUCTION, PartitionKey.corridor("USD-EUR"), instruction
        )
        receipt = await publisher.publish(message)  # returns once the stream stored it

        print(f"published {receipt.message_id} to {receipt.subject}")
        print(f"stream {receipt.stream}, sequence {receipt.sequence}")
        print(f"partition {receipt.partition}")
        await publisher.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("DELTRAN_NATS_URLS")))
