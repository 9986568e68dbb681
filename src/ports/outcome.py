"""The handler-outcome policy: how a handler's result becomes ACK, NAK, TERM or a dead letter.

This is the one place the rule is written. :func:`~message_bus.ports.subscriber.run_handler`
applies it to every delivery of every adapter, an adapter applies it to a failure it
catches outside ``run_handler`` (a stray ``CancelledError``), and both report the
outcome they settled with to the delivery's ``on_outcome`` listeners (telemetry
decorators record it). :func:`decide` is pure: it reads facts and returns a
:class:`Decision`, it settles nothing.

=====================================  ===========  ======================================
handler                                outcome      settlement
=====================================  ===========  ======================================
settled the delivery itself            ``explicit`` none (the handler's call stands)
returns                                ``ack``      ACK (a reply answers a request)
raises :class:`PermanentError`         ``term``     TERM, dead letter with its reason
raises anything else, on the last      ``dead``     TERM, dead letter with
allowed delivery of a stream message                :func:`max_deliveries_reason`
raises anything else                   ``nak``      NAK after :class:`RetryableError`'s
                                                    ``delay`` or the subscriber's backoff
runs past ``max_handler_time``         ``nak``      cancelled; NAK (``dead`` on the last
                                                    allowed delivery)
returns, ACK not confirmed             ``unconfi-   none: the broker may not have the ACK,
(``confirm_acks``)                     rmed``       the message will be redelivered
=====================================  ===========  ======================================

"Anything else" includes a ``CancelledError`` that the handler raised while nothing
cancelled the task running it (it awaited a future someone else cancelled): that is a
failed delivery like any other, not a reason to stop the worker.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from message_bus.domain.errors import PermanentError, RetryableError

from .config import SubscriberConfig


class Outcome(enum.StrEnum):
    """What became of one delivery; the values are the ``status`` label of
    ``message_bus_receive_total`` and the ``deltran.delivery.outcome`` span attribute."""

    ACK = "ack"
    NAK = "nak"
    TERM = "term"
    DEAD = "dead"
    EXPLICIT = "explicit"
    UNCONFIRMED = "unconfirmed"
    """The handler succeeded but the broker did not confirm the ACK (``confirm_acks``)."""


@dataclass(frozen=True, slots=True)
class Decision:
    """How to settle a delivery.

    Attributes:
        outcome: what happens to it.
        reason: the dead letter's reason (``term`` and ``dead``), else empty.
        delay: seconds before the redelivery (``nak``), else None.
    """

    outcome: Outcome
    reason: str = ""
    delay: float | None = None


_ACK = Decision(Outcome.ACK)
_EXPLICIT = Decision(Outcome.EXPLICIT)


ACK_WAIT_EXPIRED = "ack wait expired"
"""Why a delivery failed when its handler never settled it within ``ack_wait``."""


def handler_time_reason(max_handler_time: float) -> str:
    """Why a handler that ran past ``max_handler_time`` failed."""
    return f"handler ran past max_handler_time ({max_handler_time:g} s)"


def max_deliveries_reason(max_deliver: int, why: str) -> str:
    """The dead letter's reason for a message whose last allowed delivery failed."""
    return f"max deliveries ({max_deliver}) exhausted: {why}"


def failure_reason(error: BaseException) -> str:
    """How a handler's failure is described in logs and dead letters."""
    if isinstance(error, RetryableError | PermanentError):
        return error.reason
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def decide(
    error: BaseException | None,
    *,
    settled: bool,
    attempt: int,
    stream_backed: bool,
    config: SubscriberConfig,
) -> Decision:
    """The settlement of a delivery after its handler returned (``error`` None) or raised.

    Args:
        error: what the handler raised, None if it returned.
        settled: whether the handler already settled the delivery itself.
        attempt: the delivery count, 1 on the first delivery.
        stream_backed: whether a stream holds the message (only then can it be
            redelivered, so only then does the last allowed delivery matter).
        config: the subscriber's ``max_deliver`` and backoff.
    """
    if settled:
        return _EXPLICIT
    if error is None:
        return _ACK
    if isinstance(error, PermanentError):
        return Decision(Outcome.TERM, reason=error.reason)
    if stream_backed and attempt >= config.max_deliver:
        return Decision(
            Outcome.DEAD, reason=max_deliveries_reason(config.max_deliver, failure_reason(error))
        )
    delay = error.delay if isinstance(error, RetryableError) else None
    return Decision(Outcome.NAK, delay=config.nak_delay(attempt) if delay is None else delay)


__all__ = [
    "ACK_WAIT_EXPIRED",
    "Decision",
    "Outcome",
    "decide",
    "failure_reason",
    "handler_time_reason",
    "max_deliveries_reason",
]
