"""How a publish that NATS refused becomes the bus's :class:`PublishError`: mapped once.

Every publish path (a core write, a JetStream publish, a pipelined batch, a dead letter,
a replay) hands what went wrong here, so one failure always gets one ``reason`` and one
``retryable`` verdict, whichever path met it.
"""

from __future__ import annotations

import nats.errors

from message_bus.domain.errors import (
    BusConnectionError,
    ClosedError,
    PublishError,
    PublishFailure,
    ValidationError,
)


class MessageTooLarge(Exception):
    """The encoded message exceeds the server's ``max_payload``."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"{size} bytes exceed the server's max_payload of {limit} bytes")


WRITE_ERRORS = (
    MessageTooLarge,
    ValidationError,
    nats.errors.Error,
    ClosedError,
    BusConnectionError,
)
"""What writing a publish to the connection can raise; :func:`publish_failure` maps each."""


def publish_failure(message_id: str, subject: str, error: Exception) -> PublishError:
    """The bus error for a publish that could not be written, or that the connection
    refused (too large, invalid on the wire, closed, draining, down)."""
    if isinstance(error, PublishError):
        return error
    detail = str(error)
    if isinstance(error, MessageTooLarge):
        reason, retryable = PublishFailure.MESSAGE_TOO_LARGE, False
    elif isinstance(error, ValidationError):
        reason, retryable = PublishFailure.INVALID, False
    elif isinstance(error, nats.errors.ConnectionClosedError | ClosedError):
        reason, retryable = PublishFailure.CONNECTION_CLOSED, False
    elif isinstance(error, nats.errors.ConnectionDrainingError):
        reason, retryable = PublishFailure.CONNECTION_DRAINING, False
    else:
        reason, retryable = PublishFailure.DISCONNECTED, True
    return PublishError(message_id, subject, reason, retryable=retryable, detail=detail)


_ANSWERED = frozenset({PublishFailure.NO_RESPONDERS, PublishFailure.UNAVAILABLE})
"""Failures a reachable server reported: a stream between leaders, JetStream busy."""


def answered(error: PublishError) -> bool:
    """Whether a reachable server refused the publish for now (no responders while a
    stream's leader is elected, JetStream unavailable, a retry whose first copy is
    still being stored): a transient, refused at once."""
    return error.reason in _ANSWERED


def counts_as_outage(error: PublishError) -> bool:
    """Whether a failed publish says the broker is unavailable (a breaker failure).

    Timeouts, a lost or closed connection say so. No responders (a stream's leader
    being elected) and "unavailable" were answered by a server that is up: a cluster
    that lost one node answers them until it recovers, which is a transient to retry,
    not an outage to fail fast on.
    """
    if answered(error):
        return False
    return error.retryable or error.reason is PublishFailure.CONNECTION_CLOSED


__all__ = [
    "WRITE_ERRORS",
    "MessageTooLarge",
    "answered",
    "counts_as_outage",
    "publish_failure",
]
