"""The bus's errors: one root, few classes, structured attributes.

Every error a caller can see derives from :class:`MessageBusError`. Input errors are
also :class:`ValueError`, timeouts are also :class:`TimeoutError`, so callers can catch
either the bus's own classes or the built-in ones.
"""

from __future__ import annotations

import math
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


class DuplicateWindowError(StreamError, ValueError):
    """A stream forgets message ids sooner than a publisher may still retry one: a
    retry after the window closed would be stored as a second copy.

    Attributes:
        stream: the stream's name.
        duplicate_window: its duplicate window (seconds).
        publish_timeout: the publisher's whole retry budget (seconds).
        required: the shortest window that budget allows (seconds).
    """

    def __init__(
        self, stream: str, duplicate_window: float, publish_timeout: float, required: float
    ) -> None:
        self.duplicate_window = duplicate_window
        self.publish_timeout = publish_timeout
        self.required = required
        super().__init__(
            stream,
            f"duplicate window {duplicate_window:g}s is shorter than {required:g}s, twice "
            f"the publish_timeout of {publish_timeout:g}s (the retry budget): a retry "
            "could be stored as a second copy; lengthen the window or shorten the timeout",
        )


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
            an exponential delay from the delivery count. A NaN or infinite delay raises
            :class:`ValidationError` here (which the subscriber then treats like any
            other failure: NAK with its own backoff).
    """

    def __init__(self, reason: str, *, delay: float | None = None) -> None:
        if delay is not None and (
            isinstance(delay, bool)
            or not isinstance(delay, int | float)
            or not math.isfinite(delay)
        ):
            # A NaN or infinite delay cannot be scheduled (nor sent to JetStream):
            # refused here, where the handler's author sees it, not in the adapter.
            raise ValidationError("delay", delay, "must be a finite number of seconds or None")
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


class AckNotConfirmed(BusConnectionError):
    """The broker did not confirm an acknowledgement (timeout, or the connection dropped):
    the message may be redelivered.

    Attributes:
        stream: the stream of the delivery.
        sequence: its stream sequence.
        reason: why it was not confirmed.
    """

    def __init__(self, stream: str, sequence: int, reason: str) -> None:
        self.stream = stream
        self.sequence = sequence
        self.reason = reason
        super().__init__(f"ack of {stream} #{sequence} not confirmed: {reason}")


class SubscriptionError(MessageBusError):
    """A subscription failed and stopped receiving.

    Attributes:
        subscription: what failed (the consumer or subject it received from).
        reason: a short machine-readable cause (``permission_denied``, ...).
        detail: what the broker said.
    """

    def __init__(self, subscription: str, reason: str, detail: str = "") -> None:
        self.subscription = subscription
        self.reason = reason
        self.detail = detail
        text = f"subscription {subscription} failed: {reason}"
        super().__init__(f"{text} ({detail})" if detail else text)


class PermissionDenied(SubscriptionError):
    """The broker refused a subject the subscription must publish to (its acks).

    Attributes:
        subject: the refused subject, as the broker reported it.
    """

    def __init__(self, subscription: str, subject: str) -> None:
        self.subject = subject
        super().__init__(subscription, "permission_denied", f"publish to {subject} refused")


class AlreadyReplayedError(MessageBusError):
    """A dead letter was replayed before; replaying it again needs ``force``.

    Attributes:
        dlq_sequence: the dead letter's sequence in the dead-letter stream.
        replays: how many times it was replayed so far.
    """

    def __init__(self, dlq_sequence: int, replays: int) -> None:
        self.dlq_sequence = dlq_sequence
        self.replays = replays
        super().__init__(
            f"dead letter {dlq_sequence} was already replayed ({replays} time(s)); "
            "replay it again with force"
        )


class PartitionCountError(ValidationError):
    """An ordered group member's partition count differs from the group's.

    The partition count is part of an ordered group (``ordering="partition"``): the
    first member records it, and a member with another count would put keys in other
    partitions, so it is refused before it handles anything.

    Attributes:
        group: the group's consumer name.
        expected: the count the group was created with.
    """

    def __init__(self, group: str, partitions: int, expected: int) -> None:
        self.group = group
        self.expected = expected
        super().__init__(
            "partitions",
            partitions,
            f"ordered group {group} has {expected} partitions; a member must use the same "
            "count (see docs/ordering.md to change it)",
        )


class StartPositionConflict(ValidationError):
    """A member joins an existing consumer group with another start position.

    Where a group starts (``SubscriberConfig.start``) is part of the group: it is
    recorded when the group is created, and a member (or a restarted service) with
    another one is refused rather than ignored, so a changed setting never passes
    unnoticed. Pick another group name to start a new group elsewhere.

    Attributes:
        group: the group's consumer name.
        expected: the start position the group was created with (``first``, ``new`` or
            ``time:<RFC 3339>``).
    """

    def __init__(self, group: str, start: str, expected: str) -> None:
        self.group = group
        self.expected = expected
        super().__init__(
            "start",
            start,
            f"consumer group {group} exists and was created with start {expected!r}; "
            "a member must use the same (or use another group name to start elsewhere)",
        )


class BackupError(StreamError):
    """A stream backup could not be written, read or restored: its manifest is missing
    or unreadable, its snapshot file does not match the manifest's checksum, or the
    stream it would restore already exists.

    Attributes:
        stream: the stream's name.
        path: the backup file concerned (``""`` when none).
        reason: what is wrong.
    """

    def __init__(self, stream: str, path: str, reason: str) -> None:
        self.path = path
        super().__init__(stream, f"{reason} ({path})" if path else reason)
