"""A handler's follow-up that its publisher refuses (an invalid payload) is dead-lettered on
the first delivery, like any other wrong return value, instead of being retried."""

from __future__ import annotations

from typing import Any

from message_bus import Message, MessageType, PartitionKey, SubscriberConfig
from message_bus.app import Bus, BusSettings, resolve
from message_bus.testing.samples import sample_payload

KEY = PartitionKey.corridor("USD-EUR")


def memory_bus(**subscriber: Any) -> Bus:
    return Bus(BusSettings(backend="memory", subscriber=SubscriberConfig(**subscriber)))


async def test_a_follow_up_with_an_invalid_payload_is_dead_lettered_at_once_naming_the_field() -> (
    None
):
    bus = memory_bus(max_deliver=5)
    runs: list[str] = []

    @bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening")
    async def screen(message: Message) -> Message:
        runs.append(message.id)
        transfer = sample_payload(MessageType.ADAPTER_TRANSFER, amount="-5.00")
        return message.reply(MessageType.ADAPTER_TRANSFER, transfer)

    async with bus:
        sent = Message.new(
            MessageType.PAYMENT_INSTRUCTION, KEY, sample_payload(MessageType.PAYMENT_INSTRUCTION)
        )
        await bus.publisher.publish(sent)
        broker = await resolve(bus.container.memory_broker())
        await broker.settle()
        letters = await (await resolve(bus.container.dead_letters())).list()
        stored = broker.stream_info("ADAPTER_TRANSFERS").messages
    assert runs == [sent.id]  # not retried: the same handler returns the same payload
    assert [letter.message.id for letter in letters] == [sent.id]
    assert letters[0].deliveries == 1
    assert "payload.amount" in letters[0].reason
    assert "-5.00" in letters[0].reason
    assert stored == 0
