"""The Subscriber port: how a service receives messages, and how the outcome is acked.

Contract, for every adapter:

* At-least-once for stream-backed types: a message is delivered until it is ACKed,
  TERMed, or has been delivered ``max_deliver`` times; then it goes to the dead-letter
  stream with the reason. An ACK the broker received is never redelivered to the same
  group, and a message whose ACK the broker received is never dead-lettered.
  By default ``ack()`` does not wait for the broker's confirmation (that costs a round
  trip per message): if the connection dies between the handler's success and the
  broker receiving the ACK, the message is delivered again after ``ack_wait``, although
  its outcome was reported ``ack``. With ``confirm_acks`` the ACK is confirmed by the
  broker; an ACK that is not confirmed is reported as outcome ``unconfirmed`` (and
  ``ack()`` raises :class:`AckNotConfirmed`), and the message will be redelivered.
  Either way handlers must be idempotent by ``message.id`` -- as with any
  at-least-once bus: a process that dies mid-handler, or an ACK lost on the way,
  means another run.
* A running handler keeps its delivery alive: while it runs, the subscriber tells the
  broker it is in progress, so ``ack_wait`` does not expire for it and the message is
  not redelivered while it runs or right after it acked; no delivery of a message
  already in flight (or already acked) on this subscription starts a second handler.
  A delivery its handler NAKed is settled: it is no longer kept alive, and it is
  redelivered after the NAK's delay as a new delivery, even while that handler goes on.
  A handler that runs past ``max_handler_time`` is cancelled and its message NAKed
  (dead-lettered on its last allowed delivery). ``ack_wait`` therefore only expires
  for deliveries nobody works on (a member that died, a connection that dropped).
  ``in_progress`` still restarts the clock explicitly.
* Members of one consumer group share the work; every group sees every message.
  Groups are durable: a group that restarts resumes after its last ACK.
* At most ``max_concurrent`` handlers of one subscription (one ``subscribe`` call) run
  at once.
* Core-only types reach only subscribers that are live when the message is sent.
* A subscription that cannot go on (the broker refuses its acknowledgements) fails:
  ``active`` turns False, :attr:`Subscription.error` holds a
  :class:`SubscriptionError` (e.g. :class:`PermissionDenied`), and ``wait()`` and
  ``stop()`` raise it.

The handler decides the acknowledgement by its outcome: return -> ACK, raise
:class:`RetryableError` (or any exception) -> NAK with backoff, raise
:class:`PermanentError` -> TERM and dead-letter, fail on the last allowed delivery ->
TERM and dead-letter ("max deliveries"). The full table, and the one function that
applies it, are in :mod:`message_bus.ports.outcome`.

A handler that wants explicit control calls :func:`current_delivery` and uses
``ack``, ``nak(delay)``, ``term(reason)`` or ``in_progress`` itself; once it has
settled the delivery its outcome no longer changes anything.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import NamedTuple, Protocol, runtime_checkable

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import (
    AckNotConfirmed,
    MessageBusError,
    RetryableError,
    SubscriptionError,
    ValidationError,
)
from message_bus.domain.message import Message

from .config import SubscriberConfig
from .outcome import Outcome, decide, failure_reason, handler_time_reason

log = logging.getLogger("message_bus.subscriber")


class Delivery(ABC):
    """One delivery of one message to one handler, with its acknowledgement controls.

    Attributes:
        message: the decoded message.
        attempt: the delivery count, 1 on first delivery.
        stream: the stream it came from (None for core-only types).
        sequence: its sequence in that stream (None for core-only types).
        subject: the subject it was published to.
    """

    message: Message
    attempt: int
    stream: str | None
    sequence: int | None
    subject: str

    @property
    @abstractmethod
    def settled(self) -> bool:
        """Whether ack, nak or term was already called."""

    @abstractmethod
    async def ack(self) -> None:
        """Processing succeeded: never deliver this message to this group again.

        Raises:
            AckNotConfirmed: with ``confirm_acks``, the broker did not confirm the ACK.
        """

    @abstractmethod
    async def nak(self, delay: float | None = None) -> None:
        """Processing failed for now: redeliver after ``delay`` seconds (None = at once).

        Raises:
            ValidationError: ``delay`` is NaN or infinite (see :func:`check_delay`);
                the delivery is left unsettled.
        """

    @abstractmethod
    async def term(self, reason: str) -> None:
        """Processing can never succeed: dead-letter the message with ``reason``, then
        stop delivering it. The dead letter is stored before the TERM is sent."""

    @abstractmethod
    async def in_progress(self) -> None:
        """Still working: restart the ``ack_wait`` clock of this delivery."""

    async def respond(self, reply: Message) -> None:
        """Answer the request this delivery carries (no-op if it is not a request)."""
        return None

    _outcome_listeners: list[Callable[[Outcome | None], None]] | None = None
    _outcome_reported = False

    def on_outcome(self, listener: Callable[[Outcome | None], None]) -> None:
        """Have ``listener(outcome)`` called when :func:`run_handler` (or
        :func:`settle_failure`) is done with this delivery: with the :class:`Outcome`
        it settled the delivery with, once settled (for an ACK with ``confirm_acks``:
        once the broker confirmed it or not); or with None when ``run_handler`` settled
        nothing (a ``CancelledError`` passed through, or settling failed). After None,
        the listener hears the outcome once more if the adapter then settles a stray
        ``CancelledError`` with :func:`settle_failure`; otherwise the message will be
        delivered again. Decorators of a handler learn the outcome this way, as they
        run inside ``run_handler``."""
        if self._outcome_listeners is None:
            self._outcome_listeners = []
        self._outcome_listeners.append(listener)

    def report_outcome(self, outcome: Outcome | None) -> None:
        """Tell the :meth:`on_outcome` listeners; nothing once an outcome was reported.
        :func:`run_handler` and :func:`settle_failure` call it; adapters need not."""
        if self._outcome_reported:
            return
        self._outcome_reported = outcome is not None
        for listener in self._outcome_listeners or ():
            try:
                listener(outcome)
            except Exception:
                log.exception("a delivery outcome listener failed")


class CoreDelivery(Delivery):
    """A delivery of a core-only message: no stream holds it, so nothing is redelivered.

    Settling only records the outcome; TERM logs that the message was dropped (there
    is no stream sequence to dead-letter). Adapters subclass it to answer requests
    (:meth:`respond`).
    """

    def __init__(self, message: Message, subject: str) -> None:
        self.message = message
        self.attempt = 1
        self.stream = None
        self.sequence = None
        self.subject = subject
        self._settled = False

    @property
    def settled(self) -> bool:
        return self._settled

    async def ack(self) -> None:
        self._settled = True

    async def nak(self, delay: float | None = None) -> None:
        self._settled = True

    async def term(self, reason: str) -> None:
        if not self._settled:
            self._settled = True
            log.warning("core message %s on %s dropped: %s", self.message.id, self.subject, reason)

    async def in_progress(self) -> None:
        return None


@runtime_checkable
class MessageHandler(Protocol):
    """Processes one message; its outcome decides the acknowledgement.

    Return ``None`` to ACK, or a reply :class:`Message` to ACK and answer a request.
    Raise :class:`RetryableError` (or any exception) to NAK, :class:`PermanentError`
    to TERM and dead-letter.
    """

    async def handle(self, message: Message) -> Message | None:
        """Handle ``message``."""
        ...


class FunctionHandler:
    """Adapts an ``async def f(message) -> Message | None`` to :class:`MessageHandler`."""

    def __init__(self, function: Callable[[Message], Awaitable[Message | None]]) -> None:
        self.function = function

    async def handle(self, message: Message) -> Message | None:
        return await self.function(message)


class HandlerLimit(Protocol):
    """A time limit a handler runs under (``asyncio.timeout(...)`` is one): an async
    context manager that cancels the handler when the time is up, then raises
    ``TimeoutError`` on exit, and tells whether it did so."""

    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool | None: ...

    def expired(self) -> bool:
        """Whether the limit cut the handler off."""
        ...


def check_handler(handler: object) -> MessageHandler:
    """Return ``handler`` if it can handle messages, else raise :class:`TypeError`.

    Adapters call it in ``subscribe``, before any I/O: a plain function, or an object
    whose ``handle`` is missing or not a coroutine function, would fail on every
    delivery and be retried until dead-lettered.
    """
    handle = getattr(handler, "handle", None)
    if handle is None or not callable(handle):
        hint = (
            f"wrap a function in FunctionHandler: subscribe(FunctionHandler({_name(handler)}))"
            if callable(handler)
            else "pass an object with an async handle(message) method, or FunctionHandler(f)"
        )
        raise TypeError(f"handler must have an async handle(message) method; {hint}")
    function = getattr(handle, "__func__", handle)
    if inspect.isfunction(function) and not inspect.iscoroutinefunction(function):
        raise TypeError(
            f"{_name(handler)}.handle must be a coroutine function (async def); "
            "a plain function can be wrapped: FunctionHandler(async_function)"
        )
    return handler  # type: ignore[return-value]  # it has a callable handle


def check_delay(delay: float | None) -> None:
    """Raise :class:`ValidationError` unless ``delay`` is None or a finite number of
    seconds: a NaN or infinite redelivery delay cannot be scheduled. Adapters call it
    first thing in :meth:`Delivery.nak`, so the delivery stays unsettled."""
    if delay is None:
        return
    ok = isinstance(delay, int | float) and not isinstance(delay, bool)
    if not ok or not math.isfinite(delay):
        raise ValidationError("delay", delay, "must be a finite number of seconds or None")


def _name(value: object) -> str:
    return str(getattr(value, "__qualname__", None) or type(value).__qualname__)


_current: contextvars.ContextVar[Delivery] = contextvars.ContextVar("message_bus_delivery")


class Handling(NamedTuple):
    """The delivery :func:`run_handler` is working on, and the consumer group it is for."""

    delivery: Delivery
    group: str


_handling: contextvars.ContextVar[Handling] = contextvars.ContextVar("message_bus_handling")


def current_handling() -> Handling | None:
    """The delivery being handled or settled, with its group; None outside
    :func:`run_handler`. Unlike :func:`current_delivery` it covers the settlement too
    (the NAK, the dead letter), so every log record of a delivery can name it."""
    return _handling.get(None)


def current_delivery() -> Delivery:
    """The delivery being handled by the calling handler.

    Raises:
        LookupError: called outside a handler.
    """
    return _current.get()


async def run_handler(
    handler: MessageHandler,
    delivery: Delivery,
    config: SubscriberConfig,
    *,
    limit: HandlerLimit | None = None,
) -> Outcome:
    """Run ``handler`` on ``delivery`` and settle it by the outcome; return the outcome.

    The outcome is decided by :func:`~message_bus.ports.outcome.decide` (see its
    table). Adapters call this for every delivery so every adapter acks the same way,
    and it reports the outcome to the delivery's :meth:`~Delivery.on_outcome`
    listeners. A ``CancelledError`` (a ``BaseException``) passes through, settling
    nothing (the listeners hear None): the adapter knows whether its task was
    cancelled, and settles a stray one with :func:`settle_failure`, which reports the
    outcome then.

    The handler runs under ``limit``, which the adapter arms at the delivery's
    ``max_handler_time`` (e.g. an ``asyncio.timeout(None)`` it reschedules when its
    clock says the time is up; None: no limit). A handler cut off by it failed with
    :func:`~message_bus.ports.outcome.handler_time_reason` (NAK, or dead letter on its
    last allowed delivery). An ACK the broker did not confirm (``confirm_acks``) makes
    the outcome ``unconfirmed``.
    """
    outcome: Outcome | None = None
    handling = _handling.set(Handling(delivery, config.consumer_group))
    try:
        token = _current.set(delivery)
        try:
            if limit is None:
                reply = await handler.handle(delivery.message)
            else:
                async with limit:
                    reply = await handler.handle(delivery.message)
        except TimeoutError as exc:
            if limit is None or not limit.expired():
                outcome = await settle_failure(delivery, exc, config)
                return outcome
            log.warning(
                "handler on %s (attempt %d) ran past max_handler_time (%g s): cancelled",
                delivery.subject,
                delivery.attempt,
                config.max_handler_time,
            )
            timed_out = RetryableError(handler_time_reason(config.max_handler_time))
            outcome = await settle_failure(delivery, timed_out, config)
            return outcome
        except Exception as exc:  # noqa: BLE001  # any failure is retryable unless it says otherwise
            outcome = await settle_failure(delivery, exc, config)
            return outcome
        finally:
            _current.reset(token)
        if delivery.settled:
            outcome = Outcome.EXPLICIT
            return outcome
        if reply is not None:
            if delivery.stream is not None:
                _dropped_reply(handler, delivery)
            await delivery.respond(reply)
        try:
            await delivery.ack()
        except AckNotConfirmed as exc:
            log.warning("%s; the message will be redelivered", exc)
            outcome = Outcome.UNCONFIRMED
            return outcome
        outcome = Outcome.ACK
        return outcome
    finally:
        delivery.report_outcome(outcome)
        _handling.reset(handling)


_warned_replies: set[str] = set()


def _dropped_reply(handler: MessageHandler, delivery: Delivery) -> None:
    """Warn (once per handler) that a returned message of a stream delivery goes
    nowhere: only a request's reply is sent; a follow-up must be published."""
    name = _name(handler)
    if name in _warned_replies:
        return
    _warned_replies.add(name)
    log.warning(
        "handler %s returned a message for %s, which is not a request: it is not sent; "
        "publish follow-ups with a Publisher, or register the handler on a Bus "
        "(message_bus.app.Bus), which publishes what its handlers return",
        name,
        delivery.subject,
    )


async def settle_failure(
    delivery: Delivery, error: BaseException, config: SubscriberConfig
) -> Outcome:
    """Settle a delivery whose handler raised ``error``, by the one outcome policy.

    :func:`run_handler` calls it for every failure; an adapter calls it for a failure
    it catches itself (a stray ``CancelledError``). Either way it reports the outcome
    to the delivery's :meth:`~Delivery.on_outcome` listeners. Failures that are not the
    bus's own errors are logged, as the handler did not say what went wrong.
    """
    decision = decide(
        error,
        settled=delivery.settled,
        attempt=delivery.attempt,
        stream_backed=delivery.stream is not None,
        config=config,
    )
    outcome = decision.outcome
    if outcome is Outcome.EXPLICIT:
        delivery.report_outcome(outcome)
        return outcome
    if not isinstance(error, MessageBusError):
        log.warning(
            "handler failed on %s (attempt %d): %s",
            delivery.subject,
            delivery.attempt,
            failure_reason(error),
        )
    if outcome is Outcome.NAK:
        await delivery.nak(decision.delay)
    else:
        await delivery.term(decision.reason)
    delivery.report_outcome(outcome)
    return outcome


class Subscription(ABC):
    """A running subscription; stop or drain it when done.

    A subscription that fails (see the module doc) keeps its :class:`SubscriptionError`
    in :attr:`error`, calls the listeners of :meth:`on_failure` once, and stops; its
    ``wait()`` and ``stop()`` raise the error. Adapters report a failure with
    :meth:`fail`.
    """

    _failure: SubscriptionError | None = None
    _failure_listeners: list[Callable[[SubscriptionError], None]] | None = None

    @property
    @abstractmethod
    def active(self) -> bool:
        """Whether the subscription is still receiving."""

    @property
    def error(self) -> SubscriptionError | None:
        """Why the subscription failed, or None."""
        return self._failure

    def on_failure(self, listener: Callable[[SubscriptionError], None]) -> None:
        """Call ``listener(error)`` when the subscription fails (at once if it has)."""
        if self._failure is not None:
            listener(self._failure)
            return
        if self._failure_listeners is None:
            self._failure_listeners = []
        self._failure_listeners.append(listener)

    def fail(self, error: SubscriptionError) -> bool:
        """Record ``error`` as the subscription's failure (the first one wins) and tell
        the listeners; returns whether it was the first. The adapter then stops it."""
        if self._failure is not None:
            return False
        self._failure = error
        for listener in self._failure_listeners or ():
            try:
                listener(error)
            except Exception:
                log.exception("a subscription failure listener failed")
        return True

    def raise_failure(self) -> None:
        """Raise :attr:`error` if the subscription failed."""
        if self._failure is not None:
            raise self._failure

    @abstractmethod
    async def stop(self) -> None:
        """Stop receiving: in-flight handlers finish and are settled; deliveries fetched
        but not started are released for redelivery at once. Idempotent.

        Raises:
            SubscriptionError: the subscription had failed (it is stopped all the same).
        """

    @abstractmethod
    async def drain(self) -> None:
        """Stop receiving new messages, handle every message already fetched, then stop.
        Idempotent."""

    async def wait(self) -> None:
        """Wait until the subscription has stopped (by ``stop``, ``drain`` or a failure).

        Raises:
            SubscriptionError: it stopped because it failed.
        """
        raise NotImplementedError(f"{type(self).__name__} cannot be waited on")


class Subscriber(ABC):
    """Consumes one message type with one :class:`SubscriberConfig`.

    Attributes:
        message_type: the type this subscriber receives.
        config: consumer group, durable name, concurrency and redelivery settings.
    """

    message_type: MessageType
    config: SubscriberConfig

    @abstractmethod
    async def subscribe(self, handler: MessageHandler) -> Subscription:
        """Start delivering messages to ``handler``; returns once receiving has started
        (for core-only types: once a message published after this call will arrive).

        Raises:
            ClosedError: the subscriber was closed.
            BusConnectionError: the broker is unreachable.
            StreamError: the type's stream does not exist (apply the stream catalog)
                or the broker refused the consumer group. An adapter whose broker
                creates its streams itself (the in-memory one) never raises it.
        """

    @abstractmethod
    async def close(self) -> None:
        """Stop every subscription of this subscriber; idempotent."""
