"""BusFixture records what its publishers accepted, in order and once, as handlers see it."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from message_bus import ClosedError, Message, MessageType, PartitionKey
from message_bus.testing import BusFixture
from message_bus.testing.samples import sample_payload

KEY = PartitionKey.corridor("USD-EUR")
TYPES = [MessageType.PAYMENT_INSTRUCTION, MessageType.CHECKPOINT, MessageType.SYSTEM_EVENT]
ID_FIELDS = {
    MessageType.PAYMENT_INSTRUCTION: "payment_id",
    MessageType.CHECKPOINT: "checkpoint_id",
    MessageType.SYSTEM_EVENT: "event",
}


def message(message_type: MessageType = MessageType.PAYMENT_INSTRUCTION, **changes: Any) -> Message:
    """A message of ``message_type`` with a valid payload, ``changes`` applied."""
    return Message.new(message_type, KEY, sample_payload(message_type, **changes))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(TYPES), st.booleans()), max_size=20))
def test_published_lists_each_accepted_message_once_per_type_in_publish_order(
    plan: list[tuple[MessageType, bool]],
) -> None:
    async def run() -> None:
        async with BusFixture() as bus:
            sent: list[Message] = []
            for i, (message_type, retry) in enumerate(plan):
                m = message(message_type, **{ID_FIELDS[message_type]: f"id-{i}"})
                await bus.publish(m)
                if retry:  # the same id again: deduplicated (SYSTEM_EVENT is core: sent again)
                    await bus.publish(m)
                sent.append(m)
                if retry and not message_type.is_stream_backed:
                    sent.append(m)
            assert [m.id for m in bus.published()] == [m.id for m in sent]
            for message_type in TYPES:
                wanted = [m.id for m in sent if m.message_type == message_type]
                assert [m.id for m in bus.published(message_type)] == wanted

    asyncio.run(run())


async def test_publish_many_is_recorded_in_input_order_and_a_retried_batch_once(
    bus: BusFixture,
) -> None:
    batch = [message(payment_id=f"pay-{i}") for i in range(3)]
    publisher = bus.publisher()
    await publisher.publish_many(batch)
    await publisher.publish_many(batch)
    assert [m.id for m in bus.published()] == [m.id for m in batch]


async def test_a_recorded_message_is_a_copy_as_a_handler_receives_it(bus: BusFixture) -> None:
    proposal = MessageType.NETTING_PROPOSAL
    positions = {"BANKUS33": Decimal("-10.50"), "BANKDEFF": Decimal("10.50")}
    payload = sample_payload(proposal, positions=positions, payment_ids=["pay-1"])
    sent = Message.new(proposal, KEY, payload)
    await bus.publish(sent)
    payload["payment_ids"].append("changed after publish")
    positions["BANKUS33"] = Decimal("-99.00")
    [seen] = bus.published()
    assert seen.payload == sample_payload(
        proposal, positions={"BANKUS33": "-10.50", "BANKDEFF": "10.50"}, payment_ids=["pay-1"]
    )
    assert seen.partition == KEY.partition_number(32)
    assert seen.id == sent.id
    bus.assert_published(
        proposal,
        where={"positions": {"BANKUS33": Decimal("-10.50"), "BANKDEFF": Decimal("10.50")}},
    )
    bus.assert_published(proposal, where=lambda m: m.id == sent.id)


@pytest.mark.parametrize("count", [-1, True, 1.5, "2"])
async def test_assert_published_refuses_a_count_that_is_not_an_int_of_zero_or_more(
    bus: BusFixture, count: object
) -> None:
    with pytest.raises(ValueError, match=f"count must be an int >= 0, got {count!r}"):
        bus.assert_published(MessageType.CHECKPOINT, count=count)  # type: ignore[arg-type]


async def test_a_long_listing_is_cut_after_five_messages(bus: BusFixture) -> None:
    for i in range(8):
        await bus.publish(message(payment_id=f"pay-{i}"))
    with pytest.raises(AssertionError) as failure:
        bus.assert_published(MessageType.PAYMENT_INSTRUCTION, where={"payment_id": "pay-99"})
    text = str(failure.value)
    fifth = sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id="pay-4")
    assert f"#5: corridor.USD-EUR payload={fifth!r}" in text
    assert "#6" not in text
    assert "... and 3 more" in text


async def test_a_containers_publishers_record_and_close_ends_them_and_is_idempotent() -> None:
    bus = BusFixture()
    container = await bus.container()
    publisher = await container.publisher()
    sent = message()
    await publisher.publish(sent)
    assert [m.id for m in bus.published()] == [sent.id]
    await bus.close()
    assert bus.broker.closed
    with pytest.raises(ClosedError):
        await publisher.publish(message())
    await bus.close()


async def test_a_services_bus_runs_on_the_fixture_with_its_own_providers(bus: BusFixture) -> None:
    from dependency_injector import providers
    from dependency_injector.wiring import Provide, inject

    from message_bus.app import Bus, BusSettings, Container, build_container

    class Services(Container):
        suffix = providers.Object("-screened")

    app = Bus(build_container(BusSettings(backend="nats"), Services))

    proof_type = MessageType.SETTLEMENT_PROOF

    @app.handler(MessageType.SETTLEMENT_FINALIZE, group="proofs")
    @inject
    async def prove(
        payload: dict[str, Any], message: Message, suffix: str = Provide[Services.suffix]
    ) -> Message:
        return message.reply(
            proof_type, sample_payload(proof_type, cycle_id=payload["cycle_id"] + suffix)
        )

    await bus.start(app)
    finalize = sample_payload(MessageType.SETTLEMENT_FINALIZE, cycle_id="c-1")
    await bus.publish(
        Message.new(MessageType.SETTLEMENT_FINALIZE, PartitionKey.corridor("USD-EUR"), finalize)
    )
    await bus.settle()

    [proof] = bus.assert_published(proof_type, count=1)
    assert proof.payload == sample_payload(proof_type, cycle_id="c-1-screened")
