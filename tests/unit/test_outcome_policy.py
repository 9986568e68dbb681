"""The one handler-outcome policy: what a handler's result turns into."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus import PermanentError, RetryableError, SubscriberConfig
from message_bus.ports import Decision, Outcome, decide, max_deliveries_reason

CONFIG = SubscriberConfig(max_deliver=3, nak_initial_delay=1.0, nak_max_delay=60.0)


def _decide(
    error: BaseException | None, *, attempt: int = 1, stream_backed: bool = True
) -> Decision:
    return decide(error, settled=False, attempt=attempt, stream_backed=stream_backed, config=CONFIG)


def test_a_return_acks() -> None:
    assert _decide(None) == Decision(Outcome.ACK)


def test_a_permanent_error_terms_with_its_reason_even_on_the_first_delivery() -> None:
    assert _decide(PermanentError("creditor unknown")) == Decision(
        Outcome.TERM, reason="creditor unknown"
    )


def test_a_retryable_error_naks_after_its_own_delay_or_the_subscribers_backoff() -> None:
    assert _decide(RetryableError("busy", delay=0.5)) == Decision(Outcome.NAK, delay=0.5)
    assert _decide(RetryableError("busy"), attempt=2) == Decision(Outcome.NAK, delay=2.0)
    assert _decide(ValueError("bad"), attempt=1) == Decision(Outcome.NAK, delay=1.0)


def test_any_failure_on_the_last_allowed_delivery_is_dead_lettered_with_one_reason() -> None:
    assert _decide(RetryableError("bank offline"), attempt=3) == Decision(
        Outcome.DEAD, reason="max deliveries (3) exhausted: bank offline"
    )
    assert _decide(KeyError("x"), attempt=3).reason == "max deliveries (3) exhausted: KeyError: 'x'"
    assert _decide(asyncio.CancelledError(), attempt=3).reason == (
        "max deliveries (3) exhausted: CancelledError"
    )


def test_a_core_message_is_never_dead_lettered_for_its_delivery_count() -> None:
    assert _decide(RetryableError("x"), attempt=3, stream_backed=False).outcome is Outcome.NAK


@given(
    error=st.sampled_from([None, PermanentError("p"), RetryableError("r"), RuntimeError("e")]),
    attempt=st.integers(min_value=1, max_value=10),
    stream_backed=st.booleans(),
)
def test_a_delivery_the_handler_settled_itself_is_left_alone(
    error: BaseException | None, attempt: int, stream_backed: bool
) -> None:
    decision = decide(
        error, settled=True, attempt=attempt, stream_backed=stream_backed, config=CONFIG
    )
    assert decision == Decision(Outcome.EXPLICIT)


def test_the_max_deliveries_reason_names_the_limit_and_the_last_failure() -> None:
    assert max_deliveries_reason(5, "ack wait expired") == (
        "max deliveries (5) exhausted: ack wait expired"
    )


async def test_a_message_returned_for_a_stream_delivery_is_not_dropped_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from message_bus import FunctionHandler, Message, MessageType, PartitionKey, SubscriberConfig
    from message_bus.adapters.memory import InMemoryBroker
    from message_bus.testing.samples import sample_payload

    broker = InMemoryBroker()
    key = PartitionKey.corridor("USD-EUR")

    async def returns_a_follow_up(message: Message) -> Message:
        return message.reply(
            MessageType.NETTING_PROPOSAL, sample_payload(MessageType.NETTING_PROPOSAL)
        )

    config = SubscriberConfig(consumer_group="returns")
    await broker.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
        FunctionHandler(returns_a_follow_up)
    )
    for _ in range(2):
        payload = sample_payload(MessageType.PAYMENT_INSTRUCTION)
        await broker.publisher().publish(Message.new(MessageType.PAYMENT_INSTRUCTION, key, payload))
    with caplog.at_level("WARNING", logger="message_bus.subscriber"):
        await broker.settle()
    warnings = [r for r in caplog.records if "is not a request" in r.getMessage()]
    assert len(warnings) == 1  # once per handler, naming what to do instead
    assert "Bus" in warnings[0].getMessage()
    assert broker.stream_info("NETTING_PROPOSALS").messages == 0
    await broker.close()
