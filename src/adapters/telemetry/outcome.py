"""The outcome a handler's result leads to, as seen from a decorator around the handler.

A decorator wraps the :class:`MessageHandler`, so it runs *inside* ``run_handler`` and
never sees the outcome that function returns. It sees the facts the outcome is decided
on, though: the delivery (via :func:`current_delivery`), whether the handler settled it
itself, and what the handler returned or raised. :func:`handler_outcome` hands those
facts to the ports' one policy, :func:`~message_bus.ports.outcome.decide`, so decorators
report the outcome ``run_handler`` acts on.
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
