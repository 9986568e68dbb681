"""Prometheus metrics of the bus, and decorators that record them around any port.

Exposed series (names as scraped; ``message_type`` is the wire name, e.g.
``PaymentInstruction``):

``message_bus_publish_total{message_type,status}``
    Publishes by final result: ``success``, ``duplicate`` (the stream already held the
    id), ``rejected`` (invalid message, or refused by the broker for good),
    ``timeout``, ``error`` (anything else, e.g. circuit open, closed).
``message_bus_publish_duration_seconds{message_type}``
    Seconds the caller waited for each publish, failures included.
``message_bus_receive_total{message_type,status}``
    Deliveries handled, by the outcome ``run_handler`` settles them with: ``ack``,
    ``nak``, ``term``, ``dead``, ``explicit``, ``unconfirmed`` (the handler succeeded,
    the broker did not confirm the ACK: with ``confirm_acks``, an ACK is counted once
    its confirmation is known); plus ``decode_error``, which adapters report through
    :meth:`BusMetrics.record_decode_error`.
``message_bus_process_duration_seconds{message_type}``
    Seconds each handler ran.
``nats_connection_status{status}``
    1 for the current status (``connected``, ``disconnected``, ``reconnecting``,
    ``closed``), 0 for the others.
``message_bus_publish_retries_total{message_type}``
    Publish attempts after the first, reported by the adapter's retry hook.
``message_bus_redeliveries_total{message_type}``
    Deliveries with ``attempt`` > 1.
``message_bus_dead_letters_total{message_type,reason}``
    Messages dead-lettered: ``term`` (the handler raised PermanentError) or
    ``max_deliver`` (its last allowed delivery failed).
``message_bus_in_flight{message_type}``
    Handlers running now.
``message_bus_subscription_failures_total{message_type,reason}``
    Subscriptions that failed and stopped, e.g. ``permission_denied`` (the server
    refuses their acknowledgements).
``message_bus_request_total{message_type,status}`` and ``message_bus_request_duration_seconds``
    Requests: ``success``, ``timeout``, ``no_responders``, ``rejected``, ``error``.

Every label child is created once per message type and cached, so recording a
message costs a dict lookup and the increments themselves.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from time import perf_counter
from typing import ClassVar, Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import (
    NoRespondersError,
    PublishBatchError,
    PublishError,
    ValidationError,
)
from message_bus.domain.message import Message
from message_bus.ports import (
    Delivery,
    MessageHandler,
    Outcome,
    Publisher,
    PublishReceipt,
    Subscriber,
    SubscriberConfig,
    Subscription,
)
from message_bus.ports.subscriber import check_handler

from .outcome import DECODE_ERROR, HANDLER_OUTCOMES, delivery_or_none, handler_outcome

PUBLISH_STATUSES: Final = ("success", "duplicate", "error", "timeout", "rejected")
RECEIVE_STATUSES: Final = (*HANDLER_OUTCOMES, DECODE_ERROR)
REQUEST_STATUSES: Final = ("success", "timeout", "no_responders", "error", "rejected")
CONNECTION_STATUSES: Final = ("connected", "disconnected", "reconnecting", "closed")
DEAD_LETTER_REASONS: Final = ("term", "max_deliver")

DEFAULT_BUCKETS: Final = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
"""Histogram buckets in seconds: sub-millisecond publishes up to the 5 s publish timeout."""


def publish_status(error: BaseException) -> str:
    """The ``status`` label of a publish that raised ``error``."""
    if isinstance(error, ValidationError):
        return "rejected"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, PublishError) and not error.retryable:
        return "rejected"
    return "error"


def _accepted_status(receipt: PublishReceipt) -> str:
    return "duplicate" if receipt.duplicate else "success"


def request_status(error: BaseException) -> str:
    """The ``status`` label of a request that raised ``error``."""
    if isinstance(error, ValidationError):
        return "rejected"
    if isinstance(error, TimeoutError):
        return "timeout"
    if isinstance(error, NoRespondersError):
        return "no_responders"
    return "error"


def _type_label(message_type: MessageType | str) -> str:
    return message_type.value if isinstance(message_type, MessageType) else str(message_type)


class _CallSeries:
    """One message type's children of a ``*_total{status}`` counter and its histogram."""

    __slots__ = ("by_status", "duration")

    def __init__(
        self, total: Counter, duration: Histogram, label: str, statuses: Sequence[str]
    ) -> None:
        self.by_status = {s: total.labels(label, s) for s in statuses}
        self.duration = duration.labels(label)

    def record(self, status: str, seconds: float) -> None:
        self.by_status[status].inc()
        self.duration.observe(seconds)


class _ReceiveSeries:
    __slots__ = ("by_status", "dead_letters", "duration", "in_flight", "redeliveries")

    def __init__(self, metrics: BusMetrics, label: str) -> None:
        self.by_status = {s: metrics.receive_total.labels(label, s) for s in RECEIVE_STATUSES}
        self.duration = metrics.process_duration.labels(label)
        self.redeliveries = metrics.redeliveries_total.labels(label)
        self.in_flight = metrics.in_flight.labels(label)
        self.dead_letters = {
            Outcome.TERM: metrics.dead_letters_total.labels(label, "term"),
            Outcome.DEAD: metrics.dead_letters_total.labels(label, "max_deliver"),
        }


class BusMetrics:
    """The bus's Prometheus metrics, registered once in one registry.

    A registry can hold each metric name once, so there is one ``BusMetrics`` per
    registry: use :meth:`for_registry` to get it (creating it on first use), and pass
    it, or the registry, to every decorator and hook of that process.

    Attributes:
        publish_total, publish_duration, receive_total, process_duration,
        connection_status, publish_retries_total, redeliveries_total,
        dead_letters_total, in_flight, subscription_failures_total, request_total,
        request_duration: the metric
            objects, for callers that need them directly.
    """

    _instances: ClassVar[weakref.WeakKeyDictionary[CollectorRegistry, BusMetrics]] = (
        weakref.WeakKeyDictionary()
    )
    _instances_lock: ClassVar[threading.RLock] = threading.RLock()

    def __init__(
        self, registry: CollectorRegistry, *, buckets: Sequence[float] = DEFAULT_BUCKETS
    ) -> None:
        """Register the metrics in ``registry``.

        Raises:
            ValueError: ``registry`` already has bus metrics (use :meth:`for_registry`),
                or holds another metric of one of these names (then nothing is
                registered).
        """
        self._publish: dict[object, _CallSeries] = {}
        self._request: dict[object, _CallSeries] = {}
        self._receive: dict[object, _ReceiveSeries] = {}
        self._retries: dict[object, Counter] = {}
        self._decode_errors: dict[object, Counter] = {}
        self._create(tuple(buckets))
        self._connection = {s: self.connection_status.labels(s) for s in CONNECTION_STATUSES}
        for child in self._connection.values():
            child.set(0)
        with BusMetrics._instances_lock:
            if registry in BusMetrics._instances:
                raise ValueError(
                    "this registry already has bus metrics; use BusMetrics.for_registry"
                )
            self._register(registry)
            BusMetrics._instances[registry] = self

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> BusMetrics:
        """The bus metrics of ``registry``, registered in it on first call."""
        with cls._instances_lock:
            existing = cls._instances.get(registry)
            return existing if existing is not None else cls(registry)

    def _create(self, buckets: tuple[float, ...]) -> None:
        by_type_status = ("message_type", "status")
        by_type = ("message_type",)
        self.publish_total = Counter(
            "message_bus_publish_total",
            "Messages published, by outcome.",
            by_type_status,
            registry=None,
        )
        self.publish_duration = Histogram(
            "message_bus_publish_duration_seconds",
            "Seconds a publish took until the broker accepted or refused it.",
            by_type,
            registry=None,
            buckets=buckets,
        )
        self.receive_total = Counter(
            "message_bus_receive_total",
            "Deliveries handled, by the acknowledgement they led to.",
            by_type_status,
            registry=None,
        )
        self.process_duration = Histogram(
            "message_bus_process_duration_seconds",
            "Seconds a handler took to process one delivery.",
            by_type,
            registry=None,
            buckets=buckets,
        )
        self.connection_status = Gauge(
            "nats_connection_status",
            "1 for the current NATS connection status, 0 for the others.",
            ("status",),
            registry=None,
        )
        self.publish_retries_total = Counter(
            "message_bus_publish_retries_total",
            "Publish attempts after the first one.",
            by_type,
            registry=None,
        )
        self.redeliveries_total = Counter(
            "message_bus_redeliveries_total",
            "Deliveries of a message that had been delivered before.",
            by_type,
            registry=None,
        )
        self.dead_letters_total = Counter(
            "message_bus_dead_letters_total",
            "Messages dead-lettered: term (permanent failure) or max_deliver (exhausted).",
            ("message_type", "reason"),
            registry=None,
        )
        self.in_flight = Gauge(
            "message_bus_in_flight",
            "Handlers running now.",
            by_type,
            registry=None,
        )
        self.subscription_failures_total = Counter(
            "message_bus_subscription_failures_total",
            "Subscriptions that failed and stopped, by reason.",
            ("message_type", "reason"),
            registry=None,
        )
        self.request_total = Counter(
            "message_bus_request_total",
            "Requests sent, by outcome.",
            by_type_status,
            registry=None,
        )
        self.request_duration = Histogram(
            "message_bus_request_duration_seconds",
            "Seconds a request waited for its reply.",
            by_type,
            registry=None,
            buckets=buckets,
        )

    def _register(self, registry: CollectorRegistry) -> None:
        """Register every metric, or none: a name clash leaves ``registry`` as it was."""
        registered: list[Counter | Gauge | Histogram] = []
        try:
            for metric in (
                self.publish_total,
                self.publish_duration,
                self.receive_total,
                self.process_duration,
                self.connection_status,
                self.publish_retries_total,
                self.redeliveries_total,
                self.dead_letters_total,
                self.in_flight,
                self.subscription_failures_total,
                self.request_total,
                self.request_duration,
            ):
                registry.register(metric)
                registered.append(metric)
        except ValueError:
            for metric in registered:
                registry.unregister(metric)
            raise

    def set_connection_status(self, status: str) -> None:
        """Mark ``status`` as the current connection status (1) and the others as 0.

        Raises:
            ValueError: ``status`` is not connected, disconnected, reconnecting or closed.
        """
        if status not in self._connection:
            raise ValueError(f"unknown connection status {status!r}; one of {CONNECTION_STATUSES}")
        for name, child in self._connection.items():
            child.set(1 if name == status else 0)

    def record_retry(self, message_type: MessageType | str) -> None:
        """Count one publish retry (an attempt after the first) of ``message_type``.

        Publishers call this from their retry hook; a receipt does not say how many
        attempts it took.
        """
        child = self._retries.get(message_type)
        if child is None:
            child = self._retries[message_type] = self.publish_retries_total.labels(
                _type_label(message_type)
            )
        child.inc()

    def record_decode_error(self, message_type: MessageType | str) -> None:
        """Count one received message that could not be decoded (it never reached a
        handler). Subscribers call this with the type they consume."""
        child = self._decode_errors.get(message_type)
        if child is None:
            child = self._decode_errors[message_type] = self.receive_total.labels(
                _type_label(message_type), DECODE_ERROR
            )
        child.inc()

    def record_dead_letter(self, message_type: MessageType | str, reason: str) -> None:
        """Count one dead letter the handler decorators cannot see (e.g. an undecodable
        message an adapter dead-letters itself).

        Raises:
            ValueError: ``reason`` is not ``term`` or ``max_deliver``.
        """
        if reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"unknown dead-letter reason {reason!r}; one of {DEAD_LETTER_REASONS}")
        self.dead_letters_total.labels(_type_label(message_type), reason).inc()

    def _publish_series(self, message_type: MessageType) -> _CallSeries:
        series = self._publish.get(message_type)
        if series is None:
            series = self._publish[message_type] = _CallSeries(
                self.publish_total,
                self.publish_duration,
                _type_label(message_type),
                PUBLISH_STATUSES,
            )
        return series

    def _request_series(self, message_type: MessageType) -> _CallSeries:
        series = self._request.get(message_type)
        if series is None:
            series = self._request[message_type] = _CallSeries(
                self.request_total,
                self.request_duration,
                _type_label(message_type),
                REQUEST_STATUSES,
            )
        return series

    def _receive_series(self, message_type: MessageType) -> _ReceiveSeries:
        series = self._receive.get(message_type)
        if series is None:
            series = self._receive[message_type] = _ReceiveSeries(self, _type_label(message_type))
        return series


def _metrics_of(registry: CollectorRegistry | BusMetrics) -> BusMetrics:
    return registry if isinstance(registry, BusMetrics) else BusMetrics.for_registry(registry)


class MetricsPublisher(Publisher):
    """A :class:`Publisher` that records publish and request metrics around ``inner``.

    A publish is counted once, with the status of its final result (retries inside
    ``inner`` are counted by the retry hook, see :meth:`BusMetrics.record_retry`). In
    ``publish_many`` each message is counted by its own result, and its duration is
    the batch's: how long the caller waited for it.

    Args:
        inner: the publisher to measure.
        registry: the registry to record in, or its :class:`BusMetrics`.
    """

    def __init__(self, inner: Publisher, registry: CollectorRegistry | BusMetrics) -> None:
        self.inner = inner
        self.metrics = _metrics_of(registry)

    async def publish(self, message: Message) -> PublishReceipt:
        series = self.metrics._publish_series(message.message_type)
        start = perf_counter()
        try:
            receipt = await self.inner.publish(message)
        except Exception as exc:
            series.record(publish_status(exc), perf_counter() - start)
            raise
        series.record(_accepted_status(receipt), perf_counter() - start)
        return receipt

    async def publish_many(self, messages: Sequence[Message]) -> list[PublishReceipt]:
        metrics = self.metrics
        start = perf_counter()
        try:
            receipts = await self.inner.publish_many(messages)
        except PublishBatchError as exc:
            elapsed = perf_counter() - start
            for message, result in zip(messages, exc.results, strict=False):
                status = (
                    _accepted_status(result)
                    if isinstance(result, PublishReceipt)
                    else publish_status(result)
                )
                metrics._publish_series(message.message_type).record(status, elapsed)
            raise
        except Exception as exc:
            elapsed = perf_counter() - start
            status = publish_status(exc)
            for message in messages:
                metrics._publish_series(message.message_type).record(status, elapsed)
            raise
        elapsed = perf_counter() - start
        for message, receipt in zip(messages, receipts, strict=False):
            metrics._publish_series(message.message_type).record(_accepted_status(receipt), elapsed)
        return receipts

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        series = self.metrics._request_series(message.message_type)
        start = perf_counter()
        try:
            reply = await self.inner.request(message, timeout)
        except Exception as exc:
            series.record(request_status(exc), perf_counter() - start)
            raise
        series.record("success", perf_counter() - start)
        return reply

    async def close(self) -> None:
        await self.inner.close()


class _MeteredHandler:
    """Runs a handler and records the outcome ``run_handler`` settles its delivery with."""

    __slots__ = ("_config", "_handler", "_series")

    def __init__(
        self, handler: MessageHandler, series: _ReceiveSeries, config: SubscriberConfig
    ) -> None:
        self._handler = handler
        self._series = series
        self._config = config

    async def handle(self, message: Message) -> Message | None:
        series = self._series
        delivery = delivery_or_none()
        if delivery is not None and delivery.attempt > 1:
            series.redeliveries.inc()
        ran = _Ran()
        if delivery is not None:
            # run_handler reports the outcome once it has settled the delivery: after
            # this handler returned or raised (a cut-off at max_handler_time too), and
            # for an ACK with confirm_acks, once the broker confirmed it or not.
            delivery.on_outcome(lambda outcome: self._record(delivery, outcome, ran.seconds))
        series.in_flight.inc()
        start = perf_counter()
        returned, error = False, None
        try:
            reply = await self._handler.handle(message)
            returned = True
        except Exception as exc:
            error = exc
            raise
        finally:
            series.in_flight.dec()
            ran.seconds = perf_counter() - start
            if delivery is None and (returned or error is not None):
                self._record(None, handler_outcome(None, self._config, error), ran.seconds)
        return reply

    def _record(
        self, delivery: Delivery | None, outcome: Outcome | None, seconds: float | None
    ) -> None:
        if outcome is None:
            return  # nothing settled (e.g. the subscription stopped): it is redelivered
        series = self._series
        if seconds is not None:
            series.duration.observe(seconds)
        series.by_status[outcome].inc()
        dead_letter = series.dead_letters.get(outcome)
        if (
            dead_letter is not None
            and self._config.dead_letter
            and delivery is not None
            and delivery.stream is not None
        ):
            dead_letter.inc()


class _Ran:
    """How long a handler ran, once it is done."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: float | None = None


class MetricsSubscriber(Subscriber):
    """A :class:`Subscriber` whose handlers are measured.

    Each delivery the handler runs on is counted once in
    ``message_bus_receive_total`` with the outcome ``run_handler`` settles it with,
    as it reports it (:meth:`Delivery.on_outcome`): a handler cut off at
    ``max_handler_time`` counts as ``nak`` (``dead`` on its last allowed delivery), an
    ACK the broker did not confirm as ``unconfirmed``, and a handler that settles the
    delivery itself as ``explicit``, whichever call it made. A handler cancelled
    mid-run (subscription stopped) is not counted; its delivery is redelivered. Dead
    letters are counted for stream deliveries when the subscriber's ``dead_letter``
    setting is on.

    Args:
        inner: the subscriber to measure.
        registry: the registry to record in, or its :class:`BusMetrics`.
    """

    def __init__(self, inner: Subscriber, registry: CollectorRegistry | BusMetrics) -> None:
        self.inner = inner
        self.message_type = inner.message_type
        self.config = inner.config
        self.metrics = _metrics_of(registry)

    async def subscribe(self, handler: MessageHandler) -> Subscription:
        check_handler(handler)  # before wrapping it: the wrapper would pass the check
        series = self.metrics._receive_series(self.message_type)
        subscription = await self.inner.subscribe(_MeteredHandler(handler, series, self.config))
        failures = self.metrics.subscription_failures_total
        label = _type_label(self.message_type)
        subscription.on_failure(lambda error: failures.labels(label, error.reason).inc())
        return subscription

    async def close(self) -> None:
        await self.inner.close()
