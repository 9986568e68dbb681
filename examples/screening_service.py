"""A screening service in twenty lines: a typed handler whose returned message is published.

Run it as a service with ``deltran-bus run examples/screening_service.py:bus``; run this
file to see it work on the in-memory backend.
"""

import asyncio
from decimal import Decimal

import msgspec
from dependency_injector import providers
from dependency_injector.wiring import Provide, inject

from message_bus import Message, MessageType, PartitionKey
from message_bus.app import Bus, Container, build_container, load_settings, resolve
from message_bus.domain.payloads import PaymentInstruction


class Verdict(msgspec.Struct, frozen=True, kw_only=True):  # the follow-up: a type of our own
    payment_id: str
    hold: bool


VERDICT = MessageType.register(
    "ScreeningVerdict", "screening.verdict", payload=Verdict, stream="SCREENING_VERDICTS"
)


class Services(Container):
    watchlist = providers.Object(frozenset({"BANKRU2M"}))


bus = Bus(build_container(load_settings(), Services))


@bus.handler(MessageType.PAYMENT_INSTRUCTION, group="screening", payload=PaymentInstruction)
@inject
async def screen(
    instruction: PaymentInstruction,
    message: Message,
    watchlist: frozenset[str] = Provide[Services.watchlist],
) -> Message:
    held = instruction.creditor_bank in watchlist
    return message.reply(VERDICT, Verdict(payment_id=instruction.payment_id, hold=held))


async def main() -> None:
    bus.container.backend.override("memory")
    screened: list[Message] = []

    @bus.handler(VERDICT, group="audit")
    async def audit(message: Message) -> None:
        screened.append(message)

    async with bus:
        key = PartitionKey.corridor("USD-EUR")
        for number, creditor in enumerate(["BANKDEFF", "BANKRU2M"]):
            payment = PaymentInstruction(
                payment_id=f"pay-{number}",
                amount=Decimal("250.00"),
                currency="USD",
                debtor_bank="BANKGB2L",
                creditor_bank=creditor,
            )
            await bus.publisher.publish(Message.new(MessageType.PAYMENT_INSTRUCTION, key, payment))
        broker = await resolve(bus.container.memory_broker())
        await broker.settle()
    for message in sorted(screened, key=lambda m: m.payload["payment_id"]):
        caused = message.causation_id is not None and message.correlation_id is not None
        verdict = "hold" if message.payload["hold"] else "clear"
        print(f"{message.payload['payment_id']}: {verdict} (caused: {caused})")


if __name__ == "__main__":
    asyncio.run(main())
