"""Partition keys: the original crate's "Partitioning Example".

A key is validated when it is built (no subject token can be injected), gives the
subject suffix, and maps to a partition by BLAKE3 + jump consistent hash::

    python examples/partitioning.py
"""

from __future__ import annotations

from message_bus import Message, MessageType, PartitionKey, ValidationError


def main() -> None:
    # Partition by corridor
    key = PartitionKey.corridor("USD-EUR")
    partition = key.partition_number(32)  # 0-31
    print(f"{key.suffix:<35} partition {partition} of 32")

    # Partition by bank
    key = PartitionKey.bank("BANKGB2L")
    print(f"{key.suffix:<35} partition {key.partition_number(32)} of 32")

    # Partition by both
    key = PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L")
    print(f"{key.suffix:<35} partition {key.partition_number(32)} of 32")

    # Broadcast to all: no partition
    key = PartitionKey.broadcast()
    print(f"{key.suffix:<35} partition {key.partition_number(32)}")

    # The subject a message goes to
    message = Message.new(MessageType.NETTING_PROPOSAL, PartitionKey.corridor("GBP-USD"), {})
    print(f"subject: {message.subject}")

    # Growing 32 -> 64 partitions moves a key only to one of the new partitions
    key = PartitionKey.corridor("USD-EUR")
    print(f"32 -> 64 partitions: {key.partition_number(32)} -> {key.partition_number(64)}")

    # Bad input is refused before any subject exists
    for bad in ("USD.EUR", "usd-eur", "USD-EUR.>"):
        try:
            PartitionKey.corridor(bad)
        except ValidationError as error:
            print(f"refused: {error}")


if __name__ == "__main__":
    main()
