"""The bus's errors: one root, few classes, structured attributes.

Every error a caller can see derives from :class:`MessageBusError`. Input errors are
also :class:`ValueError`, timeouts are also :class:`TimeoutError`, so callers can catch
either the bus's own classes or the built-in ones.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from .redaction import REDACTED, redact

_MAX_SHOWN = 120


class MessageBusError(Exception):
    """Root of every error raised by the message bus."""


class ValidationError(MessageBusError, ValueError):
    """Input was rejected before any I/O.

    Neither the message nor :attr:`value` carries a secret: the value of a ``secret``
    field is ``***``, and the userinfo of any URL in a value is redacted
    (``nats://alice:***@host``).

    Attributes:
        field: the name of the offending field (``corridor_id``, ``headers``, ...).
        value: the offending value, as given (redacted, see above).
        reason: why it was rejected.
    """

    def __init__(self, field: str, value: Any, reason: str, *, secret: bool = False) -> None:
        self.field = field
        self.value = REDACTED if secret and value is not None else redact(value)
        self.reason = reason
        shown = repr(self.value)
        if len(shown) > _MAX_SHOWN:  # a payload can be large or sensitive: show its start only
            shown = shown[: _MAX_SHOWN - 3] + "..."
        super().__init__(f"invalid {field} {shown}: {reason}")


class DecodeError(MessageBusError, ValueError):
    """Bytes or headers received from the wire could not be turned into a Message.

    Attributes:
        reason: what was wrong.
        field: the header or part that was wrong (``body``, ``Deltran-Type``, ...).
    """

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"cannot decode {field}: {reason}")


class PublishFailure(StrEnum):
    """Why a publish failed: :attr:`PublishError.reason`.

    A ``StrEnum``, so logs, metrics and comparisons with the plain text keep working
    (``error.reason == "stream_full"``).
    """

    TIMEOUT = "timeout"
    """No acknowledgement within the publish timeout (retryable)."""
    CIRCUIT_OPEN = "circuit_open"
    """The circuit breaker is failing fast (retryable once it lets calls through)."""
    DISCONNECTED = "disconnected"
    """The connection is down right now (retryable)."""
    UNAVAILABLE = "unavailable"
    """JetStream answered that it cannot store the message now (retryable)."""
    NO_RESPONDERS = "no_responders"
    """Nothing answered: the stream's leader is being elected (retryable)."""
    CONNECTION_CLOSED = "connection_closed"
    """The connection was closed for good."""
    CONNECTION_DRAINING = "connection_draining"
    """The connection is draining and takes no more publishes."""
    STREAM_FULL = "stream_full"
    """The stream is at one of its limits and refuses new messages."""
    MESSAGE_TOO_LARGE = "message_too_large"
    """Headers and body exceed the server's ``max_payload``."""
    PERMISSION_DENIED = "permission_denied"
    """The server refuses publishing to this subject."""
    NO_STREAM = "no_stream"
    """No stream captures the subject: the stream catalog was not applied."""
    NOT_A_PUBACK = "not_a_puback"
    """Something other than a stream answered, so nothing says the message was stored."""
    REJECTED = "rejected"
    """JetStream refused the message for another reason (the detail says which)."""
    INVALID = "invalid"
    """The message cannot be written on the wire (subject or header)."""


class PublishError(MessageBusError):
    """A message was not accepted by the broker.

    Attributes:
        message_id: the id of the message that was not published.
        subject: its subject.
        reason: why, as a :class:`PublishFailure`.
        retryable: whether publishing the same message again may succeed.
    """

    def __init__(
        self,
        message_id: str,
        subject: str,
        reason: PublishFailure,
        *,
        retryable: bool,
        detail: str = "",
    ) -> None:
        self.message_id = message_id
        self.subject = subject
        self.reason = PublishFailure(reason)
        self.retryable = retryable
        self.detail = detail
        text = f"publish of {message_id} to {subject} failed: {reason}"
        super().__init__(f"{text} ({detail})" if detail else text)


class PublishTimeout(PublishError, TimeoutError):
    """The broker did not acknowledge the message within the publish timeout."""

    def __init__(self, message_id: str, subject: str, detail: str = "") -> None:
        super().__init__(message_id, subject, PublishFailure.TIMEOUT, retryable=True, detail=detail)


class CircuitOpenError(PublishError):
    """The publisher is failing fast because the broker has been failing."""

    def __init__(self, message_id: str, subject: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(
            message_id,
            subject,
            PublishFailure.CIRCUIT_OPEN,
            retryable=True,
            detail=f"retry after {retry_after:.3f}s",
        )


class NotFoundError(MessageBusError, KeyError):
    """Something looked up by name or number does not exist (a stream, a consumer
    group, a dead letter).

    Attributes:
        what: what was looked up (``dead letter``, ``stream``, ...).
        key: the name or number it was looked up by.
    """

    def __init__(self, what: str, key: object) -> None:
        self.what = what
        self.key = key
        super().__init__(f"no {what} {key!r}")

    def __str__(self) -> str:  # KeyError's own __str__ would show the repr of the text
        return str(self.args[0])


class StreamError(MessageBusError):
    """A stream could not be created, updated or read, or a consumer group not bound to it.

    Attributes:
        stream: The stream's name.
        reason: What JetStream said.
    """

    def __init__(self, stream: str, reason: str) -> None:
        self.stream = stream
        self.reason = reason
        super().__init__(f"stream {stream}: {reason}")


class ClosedError(MessageBusError):
    """The publisher, subscriber or connection was used after close()."""


class NoRespondersError(MessageBusError):
    """A request found nobody subscribed to answer it."""

    def __init__(self, subject: str) -> None:
        self.subject = subject
        super().__init__(f"no responders for request on {subject}")


class RequestTimeout(MessageBusError, TimeoutError):
    """A request got no reply within its timeout."""

    def __init__(self, subject: str, timeout: float) -> None:
        self.subject = subject
        self.timeout = timeout
        super().__init__(f"no reply on {subject} within {timeout:.3f}s")


class BusConnectionError(MessageBusError, ConnectionError):
    """The broker could not be reached or the connection was lost."""


class HandlerError(MessageBusError):
    """Base for errors a :class:`MessageHandler` raises to steer the acknowledgement."""


class RetryableError(HandlerError):
    """Processing failed but may succeed later: the message is NAKed and redelivered.

    Attributes:
        delay: seconds to wait before redelivery; ``None`` lets the subscriber compute
            an exponential delay from the delivery count.
    """

    def __init__(self, reason: str, *, delay: float | None = None) -> None:
        self.reason = reason
        self.delay = delay
        super().__init__(reason)


class PermanentError(HandlerError):
    """Processing can never succeed: the message is TERMed and dead-lettered."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class PublishBatchError(MessageBusError):
    """Some messages of a batch were not published; the others were.

    Attributes:
        results: one entry per input message, in input order: the receipt of each
            message that was accepted, the :class:`PublishError` of each that was not.
    """

    def __init__(self, results: list[Any]) -> None:
        self.results = results
        failed = [r for r in results if isinstance(r, PublishError)]
        self.errors: list[PublishError] = failed
        first = failed[0] if failed else None
        super().__init__(f"{len(failed)} of {len(results)} messages not published; first: {first}")
