"""The outcome a handler's result leads to, as seen from a decorator around the handler.

A decorator wraps the :class:`MessageHandler`, so it runs *inside* ``run_handler`` and
never sees the outcome that function returns. ``run_handler`` reports it to the
delivery's :meth:`~message_bus.ports.Delivery.on_outcome` listeners once the delivery
is settled (a cut-off at ``max_handler_time`` and an unconfirmed ACK included), and
the decorators record that. A handler called outside a subscriber has no delivery:
:func:`handler_outcome` then hands what it returned or raised to the ports' one
policy, :func:`~message_bus.ports.outcome.decide`.
"""

from __future__ import annotations

from typing import Final

from message_bus.ports import Delivery, Outcome, SubscriberConfig, current_delivery, decide

DECODE_ERROR: Final = "decode_error"

HANDLER_OUTCOMES: Final = tuple(Outcome)
"""Every value :func:`handler_outcome` returns."""


def delivery_or_none() -> Delivery | None:
    """The delivery being handled, or None when a handler is called outside a subscriber."""
    try:
        return current_delivery()
    except LookupError:
        return None


def handler_outcome(
    delivery: Delivery | None, config: SubscriberConfig, error: BaseException | None
) -> Outcome:
    """What ``run_handler`` does after the handler returned (``error`` None) or raised.

    Args:
        delivery: the delivery being handled; None when the handler runs outside a
            subscriber, in which case stream-only outcomes (``dead``) cannot apply.
        config: the subscriber's configuration (its ``max_deliver``).
        error: the exception the handler raised, None if it returned.
    """
    if delivery is None:
        return decide(error, settled=False, attempt=1, stream_backed=False, config=config).outcome
    return decide(
        error,
        settled=delivery.settled,
        attempt=delivery.attempt,
        stream_backed=delivery.stream is not None,
        config=config,
    ).outcome
