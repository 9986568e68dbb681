"""Publisher and subscriber configuration, with the original crate's defaults."""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from message_bus.domain.errors import DuplicateWindowError, ValidationError
from message_bus.domain.partition import DEFAULT_PARTITIONS, PartitionKey, check_partition_count

Ordering = Literal["none", "partition"]
"""How a consumer group orders its messages: not at all, or within each partition."""
ORDERINGS: tuple[Ordering, ...] = ("none", "partition")
StartPosition = Literal["first", "new"] | datetime
"""Where a NEW consumer group starts reading its stream: ``"first"`` (the first retained
message), ``"new"`` (messages stored after the group was created) or a timezone-aware
``datetime`` (the first message stored at or after it)."""
START_POSITIONS = ("first", "new")
START_TIME_PREFIX = "time:"
"""A start time's token is this prefix and the time in RFC 3339 UTC (microseconds)."""
DEFAULT_FAILOVER_CAP = 10.0
"""The longest default ``failover_timeout`` (seconds), when ``ack_wait`` is longer."""

_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
CONSUMER_NAME_SEPARATOR = "__"
"""Joins durable name, group and partition filter in a consumer name; no name holds it."""


def _positive(field: str, value: float, *, allow_zero: bool = False) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        raise ValidationError(field, value, "must be a positive number")


def _count(field: str, value: int, low: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValidationError(field, value, f"must be an int >= {low}")


EPHEMERAL_CONSUMER_PREFIX = "ephemeral-"
"""Names of ephemeral consumers start with it and hold no ``__``, so no group's
consumer name (``{durable}__{group}[__{filter}]``) is ever one."""


def start_token(start: StartPosition) -> str:
    """The canonical text of a start position: ``first``, ``new`` or
    ``time:2026-11-29T21:00:00.000000Z``. Groups store it, so that a member that joins
    with another start position can be told apart (see :attr:`SubscriberConfig.start`)."""
    if isinstance(start, datetime):
        return START_TIME_PREFIX + start.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return start


def check_start_position(value: object) -> StartPosition:
    """Checks a start position: ``"first"``, ``"new"``, or a timezone-aware datetime
    (returned in UTC), also as RFC 3339 text with an offset (``2026-11-29T21:00:00Z``,
    as settings give it).

    Raises:
        ValidationError: naming ``start`` and ``value``.
    """
    if isinstance(value, str) and value not in START_POSITIONS:
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ValidationError(
                "start", value, 'must be "first", "new" or an RFC 3339 time with an offset'
            ) from None
        if parsed.tzinfo is None:
            raise ValidationError("start", value, "a start time needs an offset (Z for UTC)")
        value = parsed
    if isinstance(value, datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValidationError("start", value, "a start time must be timezone-aware (UTC)")
        return value.astimezone(UTC)
    if value == "first" or value == "new":
        return value
    raise ValidationError("start", value, 'must be "first", "new" or a timezone-aware datetime')


def ephemeral_consumer_name() -> str:
    """A fresh, random name for an ephemeral consumer (a reader in no group)."""
    return f"{EPHEMERAL_CONSUMER_PREFIX}{secrets.token_hex(8)}"


def check_consumer_name_part(field: str, value: object) -> str:
    """Checks a durable name or consumer group, the parts of a consumer name.

    1-64 characters of ``[A-Za-z0-9_-]``, without the separator ``__`` and neither
    starting nor ending with ``_`` (so no separator can form across a part's edge).

    Raises:
        ValidationError: naming ``field`` and ``value``.
    """
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise ValidationError(field, value, "must be 1-64 characters of [A-Za-z0-9_-]")
    sep = CONSUMER_NAME_SEPARATOR
    if sep in value or value.startswith("_") or value.endswith("_"):
        raise ValidationError(
            field,
            value,
            f"must not contain {sep!r} nor start or end with '_' ({sep!r} separates "
            "durable name, group and filter in the consumer name)",
        )
    return value


MAX_BACKOFF_EXPONENT = 62
"""Doublings after which a backoff stops growing: ``initial * 2**62`` is past any cap
that makes sense, and an unbounded ``2 ** attempt`` overflows a float (``2 ** 1024``)."""

DUPLICATE_WINDOW_FACTOR = 2.0
"""A stream's duplicate window must be at least this many times a publisher's
``publish_timeout``: every retry of one ``publish`` is sent within ``publish_timeout`` of
the first attempt, so a window this long still remembers the first copy's id when the
last retry arrives, with as much time again as margin (clock steps, a slow server)."""


def capped_backoff(initial: float, cap: float, attempt: int) -> float:
    """``initial * 2 ** (attempt - 1)``, at most ``cap``; never overflows.

    Monotonic in ``attempt``; attempts below 1 count as 1.
    """
    exponent = min(max(attempt, 1) - 1, MAX_BACKOFF_EXPONENT)
    return float(min(cap, initial * 2.0**exponent))


@dataclass(frozen=True, slots=True, kw_only=True)
class PublisherConfig:
    """How a publisher talks to the broker.

    Attributes:
        use_jetstream: persist stream-backed types in JetStream (core publish if False).
        publish_timeout: overall deadline of one publish, retries included (seconds).
        max_retry_attempts: attempts per message that wait for an answer, the first one
            included; refusals that come back at once while a cluster recovers (no
            responders) are asked again until the deadline without using one up.
        initial_retry_delay: backoff before the second attempt (seconds); doubles each time.
        max_retry_delay: backoff cap (seconds); each delay gets full jitter.
        partitions: partition count written to headers (1..4096).
        circuit_breaker_threshold: consecutive failed publishes that open the breaker
            (0 disables it).
        circuit_breaker_cooldown: seconds the open breaker fails fast before one probe.
        max_in_flight: acks awaited at once by ``publish_many``.
        validate_payloads: check every payload against its type's Struct before any
            I/O (``MessageType.payload_type``; see
            :func:`~message_bus.domain.payload_schema.check_payload`); False publishes
            free-form payloads unchecked (tests, benchmarks, replaying raw data).
    """

    use_jetstream: bool = True
    publish_timeout: float = 5.0
    max_retry_attempts: int = 3
    initial_retry_delay: float = 0.1
    max_retry_delay: float = 2.0
    partitions: int = DEFAULT_PARTITIONS
    circuit_breaker_threshold: int = 5
    circuit_breaker_cooldown: float = 10.0
    max_in_flight: int = 1024
    validate_payloads: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ValidationError` naming the first bad field."""
        _positive("publish_timeout", self.publish_timeout)
        _count("max_retry_attempts", self.max_retry_attempts)
        _positive("initial_retry_delay", self.initial_retry_delay, allow_zero=True)
        _positive("max_retry_delay", self.max_retry_delay, allow_zero=True)
        check_partition_count(self.partitions)
        _count("circuit_breaker_threshold", self.circuit_breaker_threshold, low=0)
        _positive("circuit_breaker_cooldown", self.circuit_breaker_cooldown, allow_zero=True)
        _count("max_in_flight", self.max_in_flight)
        if not isinstance(self.validate_payloads, bool):
            raise ValidationError("validate_payloads", self.validate_payloads, "must be a bool")

    def retry_delay(self, attempt: int) -> float:
        """Backoff cap after failed attempt number ``attempt`` (1-based), before jitter."""
        return capped_backoff(self.initial_retry_delay, self.max_retry_delay, attempt)

    @property
    def min_duplicate_window(self) -> float:
        """The shortest duplicate window a stream may have for this publisher (seconds):
        :data:`DUPLICATE_WINDOW_FACTOR` times ``publish_timeout``, the whole retry budget
        of one publish."""
        return DUPLICATE_WINDOW_FACTOR * self.publish_timeout

    def check_duplicate_window(self, stream: str, duplicate_window: float) -> None:
        """Raise :class:`DuplicateWindowError` unless ``stream``'s window outlives every
        retry of one publish (see :attr:`min_duplicate_window`)."""
        window = duplicate_window
        ok = isinstance(window, int | float) and math.isfinite(window)
        if not ok or window < self.min_duplicate_window:
            raise DuplicateWindowError(
                stream, window, self.publish_timeout, self.min_duplicate_window
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class SubscriberConfig:
    """How a subscriber consumes one message type.

    Attributes:
        consumer_group: members of one group share the work; each group sees everything.
        durable_name: the durable consumer's base name; with ``consumer_group`` it names
            the consumer, so a restarted group resumes where it stopped.
        max_concurrent: handlers in flight at once, per subscriber.
        ack_wait: seconds a delivery may stay unacknowledged before it is redelivered.
        max_deliver: deliveries before the message is dead-lettered.
        use_jetstream: consume from the stream (core subscription if False).
        partition_key: only messages with exactly this key (None = all).
        nak_initial_delay: redelivery delay after the first failure (seconds); doubles
            with each delivery.
        nak_max_delay: redelivery delay cap (seconds).
        max_ack_pending: deliveries unacknowledged at once across the whole group.
        fetch_batch: messages asked for per pull (adapters may ask for fewer).
        dead_letter: dead-letter TERMed and exhausted messages (else just drop them).
        max_handler_time: seconds a handler may run on one delivery (default 5 minutes).
            While it runs, the subscriber keeps its delivery alive (``ack_wait`` does not
            expire for it, and no other delivery of the message starts on this
            subscriber); past this limit the handler is cancelled and the message is
            NAKed (dead-lettered on its last allowed delivery), so a hung handler is not
            kept alive forever.
        confirm_acks: wait for the broker's confirmation of every ACK (JetStream's
            double ack); an ACK that is not confirmed within ``ack_confirm_timeout``
            (or whose connection dropped) is reported as not acked (outcome
            ``unconfirmed``) and the message will be redelivered. Off by default: it
            costs a round trip per ACK.
        ack_confirm_timeout: seconds to wait for an ACK's confirmation.
        ordering: ``"none"`` (a shared group: members share messages, in no order) or
            ``"partition"`` (an ordered group: each partition is owned by one member and
            handled one message at a time, in stream order; a failure holds its
            partition until it succeeds or is dead-lettered; ``max_concurrent`` bounds
            the partitions handled at once). See ``docs/ordering.md``.
        partitions: an ordered group's partition count (1..4096); every member of the
            group must use the same. Publishers with the same count write the same
            numbers in ``Deltran-Partition``.
        failover_timeout: an ordered group: seconds after which a member that stopped
            heartbeating is dead and its partitions move (None: ``min(ack_wait, 10)``).
        start: where the group starts when it is created: ``"first"`` (the first
            retained message, the default), ``"new"`` (only messages stored after the
            group was created) or a timezone-aware ``datetime`` (the first message
            stored at or after it). It matters only when the group is created: a group
            that exists resumes where it stopped, and a consumer re-created after it
            was lost resumes from the group's last known position, never from "new".
            The group records it (a JetStream consumer's metadata, an ordered group's
            spec); a member that joins an existing group with another ``start`` is
            refused with :class:`~message_bus.domain.errors.StartPositionConflict`.
            See ``docs/start-position.md``.
    """

    consumer_group: str = "deltran-workers"
    durable_name: str = "deltran-consumer"
    max_concurrent: int = 10
    ack_wait: float = 30.0
    max_deliver: int = 3
    use_jetstream: bool = True
    partition_key: PartitionKey | None = None
    nak_initial_delay: float = 1.0
    nak_max_delay: float = 60.0
    max_ack_pending: int = 1000
    fetch_batch: int = 64
    dead_letter: bool = True
    max_handler_time: float = 300.0
    confirm_acks: bool = False
    ack_confirm_timeout: float = 5.0
    ordering: Ordering = "none"
    partitions: int = DEFAULT_PARTITIONS
    failover_timeout: float | None = None
    start: StartPosition = "first"

    def __post_init__(self) -> None:
        self.validate()
        # One instant, one representation: a start time is kept in UTC.
        object.__setattr__(self, "start", check_start_position(self.start))

    def validate(self) -> None:
        """Raise :class:`ValidationError` naming the first bad field."""
        for field, value in (
            ("consumer_group", self.consumer_group),
            ("durable_name", self.durable_name),
        ):
            check_consumer_name_part(field, value)
        _count("max_concurrent", self.max_concurrent)
        _positive("ack_wait", self.ack_wait)
        _count("max_deliver", self.max_deliver)
        _positive("nak_initial_delay", self.nak_initial_delay, allow_zero=True)
        _positive("nak_max_delay", self.nak_max_delay, allow_zero=True)
        _count("max_ack_pending", self.max_ack_pending)
        _count("fetch_batch", self.fetch_batch)
        _positive("max_handler_time", self.max_handler_time)
        if not isinstance(self.confirm_acks, bool):
            raise ValidationError("confirm_acks", self.confirm_acks, "must be a bool")
        _positive("ack_confirm_timeout", self.ack_confirm_timeout)
        if self.partition_key is not None and not isinstance(self.partition_key, PartitionKey):
            raise ValidationError("partition_key", self.partition_key, "must be a PartitionKey")
        if self.ordering not in ORDERINGS:
            raise ValidationError("ordering", self.ordering, f"must be one of {ORDERINGS}")
        check_partition_count(self.partitions)
        if self.failover_timeout is not None:
            _positive("failover_timeout", self.failover_timeout)
        check_start_position(self.start)
        if self.ordered and self.partition_key is not None:
            raise ValidationError(
                "partition_key",
                self.partition_key,
                "an ordered group (ordering='partition') consumes every partition; "
                "leave partition_key unset",
            )

    @property
    def consumer_name(self) -> str:
        """The durable consumer's name: ``{durable_name}__{consumer_group}[__{filter}]``.

        ``filter`` is the partition key's suffix with ``.`` as ``_``
        (``corridor_USD-EUR_bank_BANKGB2L``). The naming is injective: neither name may
        hold ``__`` or start or end with ``_`` (see :func:`check_consumer_name_part`),
        and key tokens hold no ``_``, so splitting a consumer name at ``__`` gives back
        durable name, group and filter. Two groups, or one group with two filters,
        never share a consumer (and a position) by accident.
        """
        sep = CONSUMER_NAME_SEPARATOR
        name = f"{self.durable_name}{sep}{self.consumer_group}"
        if self.partition_key is not None:
            name += sep + self.partition_key.suffix.replace(".", "_")
        return name

    def nak_delay(self, attempt: int) -> float:
        """Redelivery delay after failed delivery number ``attempt`` (1-based)."""
        return capped_backoff(self.nak_initial_delay, self.nak_max_delay, attempt)

    @property
    def start_token(self) -> str:
        """The canonical text of ``start`` (see :func:`start_token`)."""
        return start_token(self.start)

    @property
    def ordered(self) -> bool:
        """Whether this is an ordered group (``ordering="partition"``)."""
        return self.ordering == "partition"

    @property
    def failover_after(self) -> float:
        """Seconds after which an ordered group's silent member is dead:
        ``failover_timeout``, by default ``min(ack_wait, 10)``."""
        if self.failover_timeout is not None:
            return self.failover_timeout
        return min(self.ack_wait, DEFAULT_FAILOVER_CAP)
