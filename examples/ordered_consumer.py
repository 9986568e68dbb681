"""An ordered consumer group: per-key order with two members and a retry that holds its partition.

Two members join one ordered group (``ordering="partition"``): each partition of the
payment instructions is owned by one member and handled one message at a time, in the
order the messages were stored. One payment fails once with a ``RetryableError``: its
partition holds (the payments after it wait) until the retry succeeds, while the other
partitions go on. The output lists, per partition key, the payments in the order they
were handled (``x`` marks the failed attempt). See docs/ordering.md.

Runs on the in-memory bus::

    python examples/ordered_consumer.py
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict

from message_bus import (
    Message,
    MessageType,
    PartitionKey,
    RetryableError,
    SubscriberConfig,
    current_delivery,
)
from message_bus.adapters.memory import InMemoryBroker

KEYS = [
    PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L"),
    PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKUS33"),
    PartitionKey.corridor_bank(corridor_id="GBP-USD", bank_id="BANKDEFF"),
]
PAYMENTS = 12
FAILS_ONCE = "pay-03"


class Ledger:
    """Books payments; the first attempt of ``FAILS_ONCE`` finds the ledger busy."""

    def __init__(self, name: str, log: dict[str, list[str]], running: set[str]) -> None:
        self.name = name
        self.log = log
        self.running = running
        self.handled = 0

    async def handle(self, message: Message) -> None:
        key = message.partition_key.suffix
        payment_id = message.payload["payment_id"]
        assert key not in self.running, "two handlers of one key at once"
        self.running.add(key)
        try:
            await asyncio.sleep(0.01)  # booking takes a while
            if payment_id == FAILS_ONCE and current_delivery().attempt == 1:
                self.log[key].append(f"{payment_id}x")
                raise RetryableError("ledger busy", delay=0.2)  # the partition holds
            self.log[key].append(payment_id)
            self.handled += 1
        finally:
            self.running.discard(key)


async def main() -> None:
    broker = InMemoryBroker()
    config = SubscriberConfig(
        consumer_group="ledger",
        ordering="partition",  # an ordered group
        partitions=32,  # the count the publishers write (the settings' `partitions`)
        max_concurrent=4,  # partitions handled at once, per member
        failover_timeout=2.0,  # a silent member's partitions move after 2 s
    )
    log: dict[str, list[str]] = defaultdict(list)
    running: set[str] = set()
    members = [Ledger(name, log, running) for name in ("member-a", "member-b")]
    subscriptions = [
        await broker.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(member)
        for member in members
    ]

    publisher = broker.publisher()
    for n in range(PAYMENTS):
        key = KEYS[n % len(KEYS)]
        payload = {
            "payment_id": f"pay-{n:02d}",
            "amount": f"{10 + n}.00",
            "currency": key.corridor_id[:3],
            "debtor_bank": key.bank_id,
            "creditor_bank": "BANKFRPP",
            "corridor": key.corridor_id,
        }
        await publisher.publish(Message.new(MessageType.PAYMENT_INSTRUCTION, key, payload))

    deadline = time.monotonic() + 10
    while sum(m.handled for m in members) < PAYMENTS:
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited 10 s for {PAYMENTS} payments to be handled")
        await asyncio.sleep(0.02)

    print(f"ordered group 'ledger': {len(members)} members, {config.partitions} partitions")
    for key in KEYS:
        handled = log[key.suffix]
        booked = [p for p in handled if not p.endswith("x")]
        in_order = booked == sorted(booked)
        print(
            f"{key.suffix:<32} partition {key.partition_number(config.partitions):>2}: "
            f"{' '.join(handled)}  (in order: {in_order})"
        )
    print(f"{FAILS_ONCE} failed once: the payments after it in its partition waited for its retry")
    for subscription in subscriptions:
        await subscription.drain()
    await broker.close()


if __name__ == "__main__":
    asyncio.run(main())
