"""The settlement a handler's result leads to, as seen from around the handler.

A decorator wraps the :class:`MessageHandler`, so it runs *inside* ``run_handler`` and
never sees the string that function returns. It sees the same facts ``run_handler``
decides on, though: the delivery (via :func:`current_delivery`), whether the handler
settled it itself, and what the handler returned or raised. :func:`handler_outcome`
applies ``run_handler``'s rules to those facts, so decorators report the outcome
``run_handler`` acts on.
"""

from __future__ import annotations

from typing import Final

from message_bus.domain.errors import PermanentError
from message_bus.ports import Delivery, SubscriberConfig, current_delivery

ACK: Final = "ack"
NAK: Final = "nak"
TERM: Final = "term"
DEAD: Final = "dead"
EXPLICIT: Final = "explicit"
DECODE_ERROR: Final = "decode_error"

HANDLER_OUTCOMES: Final = (ACK, NAK, TERM, DEAD, EXPLICIT)
"""Every value :func:`handler_outcome` returns; the same strings as ``run_handler``'s."""


def delivery_or_none() -> Delivery | None:
    """The delivery being handled, or None when a handler is called outside a subscriber."""
    try:
        return current_delivery()
    except LookupError:
        return None


def handler_outcome(
    delivery: Delivery | None, config: SubscriberConfig, error: Exception | None
) -> str:
    """What ``run_handler`` does after the handler returned (``error`` None) or raised.

    Args:
        delivery: the delivery being handled; None when the handler runs outside a
            subscriber, in which case stream-only outcomes (``dead``) cannot apply.
        config: the subscriber's configuration (its ``max_deliver``).
        error: the exception the handler raised, None if it returned.

    Returns:
        ``explicit`` if the handler settled the delivery itself, else ``ack`` on return,
        ``term`` on :class:`PermanentError`, ``dead`` on any other exception at the last
        allowed delivery of a stream message, ``nak`` otherwise.
    """
    if delivery is not None and delivery.settled:
        return EXPLICIT
    if error is None:
        return ACK
    if isinstance(error, PermanentError):
        return TERM
    if (
        delivery is not None
        and delivery.stream is not None
        and delivery.attempt >= config.max_deliver
    ):
        return DEAD
    return NAK
