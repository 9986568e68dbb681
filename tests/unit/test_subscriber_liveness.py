"""Handler time limits, confirmed acks and failed subscriptions, as the ports and the
telemetry decorators see them (no broker): settings, outcomes and metrics."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest
from fakes import STREAM, DeliveringSubscriber, FakeDelivery, NoSubscription
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from message_bus import Message, MessageType, PartitionKey, SubscriberConfig, ValidationError
from message_bus.adapters.telemetry import MetricsSubscriber
from message_bus.app.config import load_settings
from message_bus.domain.errors import AckNotConfirmed, PermissionDenied
from message_bus.ports import Outcome, run_handler
from message_bus.ports.subscriber import FunctionHandler

PAYMENT = MessageType.PAYMENT_INSTRUCTION


def payment() -> Message:
    return Message.new(PAYMENT, PartitionKey.corridor("USD-EUR"), {"payment_id": "p"})


# -- settings ---------------------------------------------------------------------------


def test_keep_alive_settings_have_documented_defaults() -> None:
    config = SubscriberConfig()
    assert config.max_handler_time == 300.0
    assert config.confirm_acks is False
    assert config.ack_confirm_timeout == 5.0


@given(st.floats(min_value=1e-6, max_value=1e9, allow_nan=False, allow_infinity=False))
def test_any_positive_finite_handler_time_and_confirm_timeout_are_accepted(seconds: float) -> None:
    config = SubscriberConfig(max_handler_time=seconds, ack_confirm_timeout=seconds)
    assert config.max_handler_time == seconds
    assert config.ack_confirm_timeout == seconds


@pytest.mark.parametrize("field", ["max_handler_time", "ack_confirm_timeout"])
@given(
    bad=st.one_of(
        st.floats(max_value=0.0),
        st.just(math.inf),
        st.just(math.nan),
        st.booleans(),
        st.text(max_size=5),
    )
)
def test_a_bad_duration_is_rejected_naming_the_field_and_value(field: str, bad: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        SubscriberConfig(**{field: bad})
    assert caught.value.field == field
    assert caught.value.value is bad or (isinstance(bad, float) and math.isnan(bad))


@pytest.mark.parametrize("bad", [1, 0, "yes", None])
def test_confirm_acks_must_be_a_bool(bad: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        SubscriberConfig(confirm_acks=bad)
    assert caught.value.field == "confirm_acks"


def test_keep_alive_settings_come_from_the_environment() -> None:
    settings = load_settings(
        environ={
            "DELTRAN_MAX_HANDLER_TIME": "60",
            "DELTRAN_CONFIRM_ACKS": "true",
            "DELTRAN_ACK_CONFIRM_TIMEOUT": "2.5",
        }
    )
    assert settings.subscriber.max_handler_time == 60.0
    assert settings.subscriber.confirm_acks is True
    assert settings.subscriber.ack_confirm_timeout == 2.5


# -- run_handler ------------------------------------------------------------------------


class ConfirmingDelivery(FakeDelivery):
    """A delivery whose ACK is confirmed, or not, as told."""

    def __init__(self, message: Message, attempt: int = 1, *, confirmed: bool) -> None:
        super().__init__(message, attempt)
        self.confirmed = confirmed

    async def ack(self) -> None:
        await super().ack()
        if not self.confirmed:
            raise AckNotConfirmed(STREAM, 7, "the connection is disconnected")


async def succeed(message: Message) -> None:
    return None


async def test_an_unconfirmed_ack_makes_the_outcome_unconfirmed() -> None:
    delivery = ConfirmingDelivery(payment(), confirmed=False)
    outcome = await run_handler(FunctionHandler(succeed), delivery, SubscriberConfig())
    assert outcome is Outcome.UNCONFIRMED
    assert delivery.actions == ["ack"]


async def test_a_confirmed_ack_is_an_ack() -> None:
    delivery = ConfirmingDelivery(payment(), confirmed=True)
    outcome = await run_handler(FunctionHandler(succeed), delivery, SubscriberConfig())
    assert outcome is Outcome.ACK


async def hang(message: Message) -> None:
    await asyncio.Event().wait()


async def test_a_handler_past_its_limit_is_cancelled_and_nacked() -> None:
    delivery = FakeDelivery(payment(), attempt=1)
    config = SubscriberConfig(max_handler_time=0.01)
    outcome = await run_handler(
        FunctionHandler(hang), delivery, config, limit=asyncio.timeout(0.01)
    )
    assert outcome is Outcome.NAK
    assert delivery.actions == ["nak"]


async def test_a_handler_past_its_limit_on_the_last_delivery_is_dead() -> None:
    delivery = FakeDelivery(payment(), attempt=3)
    config = SubscriberConfig(max_handler_time=0.01, max_deliver=3)
    outcome = await run_handler(
        FunctionHandler(hang), delivery, config, limit=asyncio.timeout(0.01)
    )
    assert outcome is Outcome.DEAD
    assert delivery.actions == ["term"]


async def test_a_timeout_the_handler_raises_itself_is_an_ordinary_failure() -> None:
    async def times_out(message: Message) -> None:
        raise TimeoutError("ledger did not answer")

    delivery = FakeDelivery(payment(), attempt=1)
    limit = asyncio.timeout(60.0)
    outcome = await run_handler(
        FunctionHandler(times_out), delivery, SubscriberConfig(), limit=limit
    )
    assert outcome is Outcome.NAK
    assert not limit.expired()


# -- metrics ----------------------------------------------------------------------------


class FailingSubscription(NoSubscription):
    """A subscription a test makes fail."""


def receive_total(registry: CollectorRegistry, status: str) -> float:
    value = registry.get_sample_value(
        "message_bus_receive_total", {"message_type": PAYMENT.value, "status": status}
    )
    return value or 0.0


@pytest.mark.parametrize(("confirmed", "status"), [(True, "ack"), (False, "unconfirmed")])
async def test_metrics_count_an_ack_once_its_confirmation_is_known(
    confirmed: bool, status: str
) -> None:
    registry = CollectorRegistry()
    inner = DeliveringSubscriber()
    metered = MetricsSubscriber(inner, registry)
    await metered.subscribe(FunctionHandler(succeed))
    assert inner.handler is not None
    delivery = ConfirmingDelivery(payment(), confirmed=confirmed)
    await run_handler(inner.handler, delivery, inner.config)
    assert receive_total(registry, status) == 1
    assert receive_total(registry, "ack") + receive_total(registry, "unconfirmed") == 1


async def test_metrics_count_a_failed_subscription_by_reason() -> None:
    registry = CollectorRegistry()
    subscription = FailingSubscription()

    class Failing(DeliveringSubscriber):
        async def subscribe(self, handler: Any) -> Any:
            return subscription

    handle = await MetricsSubscriber(Failing(), registry).subscribe(FunctionHandler(succeed))
    error = PermissionDenied("PAYMENT_INSTRUCTIONS/c", "$js.ack.payment_instructions.c.1.1.1.1.0")
    assert handle.fail(error)
    assert not handle.fail(PermissionDenied("x", "y"))  # the first failure wins
    assert handle.error is error
    with pytest.raises(PermissionDenied):
        handle.raise_failure()
    value = registry.get_sample_value(
        "message_bus_subscription_failures_total",
        {"message_type": PAYMENT.value, "reason": "permission_denied"},
    )
    assert value == 1


# -- the in-memory broker's clock ---------------------------------------------------------


def test_a_manual_clock_drops_cancelled_timers_so_its_heap_stays_bounded() -> None:
    from message_bus.adapters.memory import ManualClock

    clock = ManualClock()
    fired: list[int] = []
    for n in range(10_000):  # a handler per delivery arms, then cancels, a timer
        clock.call_at(300.0 + n, lambda: None).cancel()
    clock.call_at(1.0, lambda: fired.append(1))
    assert clock.pending_timers == 1
    assert clock.held_timers < 2_100
    clock.advance(2.0)
    assert fired == [1]
