"""Which failed publishes the circuit breaker counts as an outage."""

from __future__ import annotations

import pytest

from message_bus.adapters.nats.failures import answered, counts_as_outage
from message_bus.domain.errors import PublishError, PublishFailure, PublishTimeout


def failure(reason: PublishFailure, *, retryable: bool = True) -> PublishError:
    return PublishError(
        "id", "deltran.payment.instruction.corridor.USD-EUR", reason, retryable=retryable
    )


@pytest.mark.parametrize("reason", [PublishFailure.NO_RESPONDERS, PublishFailure.UNAVAILABLE])
def test_a_refusal_from_a_server_that_is_up_is_a_transient_not_an_outage(
    reason: PublishFailure,
) -> None:
    error = failure(reason)

    assert answered(error)
    assert not counts_as_outage(error)


def test_a_timeout_a_lost_connection_and_a_closed_one_are_outages() -> None:
    assert counts_as_outage(PublishTimeout("id", "subject"))
    assert counts_as_outage(failure(PublishFailure.DISCONNECTED))
    assert counts_as_outage(failure(PublishFailure.CONNECTION_CLOSED, retryable=False))


@pytest.mark.parametrize(
    "reason",
    [PublishFailure.STREAM_FULL, PublishFailure.PERMISSION_DENIED, PublishFailure.NO_STREAM],
)
def test_a_rejection_proves_the_broker_is_up(reason: PublishFailure) -> None:
    assert not counts_as_outage(failure(reason, retryable=False))
