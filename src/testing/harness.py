"""What a contract scenario runs against: a harness over one adapter, and waiting helpers."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, runtime_checkable

from message_bus.domain.catalog import MessageType
from message_bus.ports.config import PublisherConfig, SubscriberConfig
from message_bus.ports.dead_letters import DeadLetters
from message_bus.ports.publisher import Publisher
from message_bus.ports.subscriber import Subscriber


@dataclass(frozen=True, slots=True, kw_only=True)
class Features:
    """What an adapter can do, and how scenarios must wait for it.

    Attributes:
        fake_clock: ``advance`` moves a fake clock (exact; no real waiting); otherwise it
            sleeps, and scenarios add a safety margin to every wait for a timer.
        min_ack_wait: the smallest ``ack_wait``/NAK delay (seconds) the adapter honours
            precisely enough to test (JetStream's timers need about one second).
        supports_request_reply: ``Publisher.request`` works (core request-reply).
        dead_letters_on_ack_wait_exhaustion: a message whose last allowed delivery is
            never settled is dead-lettered once its ack wait expires.
        timeout: the bound on every wait for a delivery or a dead letter (seconds).
        stream_limits: the harness has ``async add_stream(message_type)``, creating the
            stream (limits included) of a type registered after it was built.
    """

    fake_clock: bool = False
    min_ack_wait: float = 1.0
    supports_request_reply: bool = True
    dead_letters_on_ack_wait_exhaustion: bool = True
    timeout: float = 10.0
    stream_limits: bool = False


@runtime_checkable
class BusHarness(Protocol):
    """One adapter, ready for one scenario; built by a :data:`HarnessFactory`.

    The harness owns what it creates: :meth:`close` closes every publisher and
    subscriber it handed out (idempotent). Scenarios name their consumer groups and
    partition keys uniquely, so a harness may share one broker between scenarios.
    """

    features: Features

    def publisher(self, config: PublisherConfig | None = None) -> Publisher:
        """A publisher on this harness's broker. Scenarios publish free-form payloads
        (``{"n": 1}``), so without a config it does not check payloads against their
        types' Structs (``PublisherConfig(validate_payloads=False)``)."""
        ...

    def subscriber(
        self,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        *,
        ephemeral: bool = False,
    ) -> Subscriber:
        """A subscriber on this harness's broker (``ephemeral``: a reader in no group)."""
        ...

    def dead_letters(self) -> DeadLetters:
        """The dead-letter stream."""
        ...

    async def advance(self, seconds: float) -> None:
        """Let ``seconds`` of broker time pass (fake clock: advance it and settle; real
        clock: sleep)."""
        ...

    async def settle(self) -> None:
        """Give deliveries that are due now the chance to reach their handlers, so a
        scenario can check that something did *not* happen (fake clock: until the broker
        is quiet; real broker: a short sleep)."""
        ...

    async def close(self) -> None:
        """Close everything this harness created; idempotent."""
        ...


HarnessFactory = Callable[[], Awaitable[BusHarness]]
"""Builds a fresh harness for one scenario."""


class WrappedHarness:
    """A harness whose publishers and subscribers are wrapped, e.g. in telemetry decorators.

    Args:
        inner: the harness to wrap.
        wrap_publisher: called on every publisher ``inner`` creates.
        wrap_subscriber: called on every subscriber ``inner`` creates.
    """

    def __init__(
        self,
        inner: BusHarness,
        *,
        wrap_publisher: Callable[[Publisher], Publisher] = lambda p: p,
        wrap_subscriber: Callable[[Subscriber], Subscriber] = lambda s: s,
    ) -> None:
        self.inner = inner
        self.features = inner.features
        self._wrap_publisher = wrap_publisher
        self._wrap_subscriber = wrap_subscriber

    def publisher(self, config: PublisherConfig | None = None) -> Publisher:
        return self._wrap_publisher(self.inner.publisher(config))

    def subscriber(
        self,
        message_type: MessageType,
        config: SubscriberConfig | None = None,
        *,
        ephemeral: bool = False,
    ) -> Subscriber:
        inner = self.inner.subscriber(message_type, config, ephemeral=ephemeral)
        return self._wrap_subscriber(inner)

    def dead_letters(self) -> DeadLetters:
        return self.inner.dead_letters()

    async def add_stream(self, message_type: MessageType) -> None:
        """The inner harness's ``add_stream`` (see :attr:`Features.stream_limits`)."""
        await self.inner.add_stream(message_type)  # type: ignore[attr-defined]

    async def advance(self, seconds: float) -> None:
        await self.inner.advance(seconds)

    async def settle(self) -> None:
        await self.inner.settle()

    def utcnow(self) -> datetime:
        """The inner harness's broker time (see :func:`broker_utcnow`)."""
        return broker_utcnow(self.inner)

    async def close(self) -> None:
        await self.inner.close()


def broker_utcnow(harness: object) -> datetime:
    """The broker's wall-clock time: the harness's ``utcnow()`` if it has one (a fake
    clock's), else the system's (a real broker's clock is the machine's)."""
    utcnow = getattr(harness, "utcnow", None)
    if callable(utcnow):
        now = utcnow()
        assert isinstance(now, datetime), f"utcnow() gave {now!r}, not a datetime"
        return now
    return datetime.now(UTC)


async def eventually(
    predicate: Callable[[], bool | Awaitable[bool]],
    *,
    timeout: float = 10.0,
    interval: float = 0.005,
    what: str = "the condition",
) -> None:
    """Wait until ``predicate()`` is true, polling; fail the scenario after ``timeout``.

    The first polls only yield to the event loop, so an in-process broker is not slowed
    down by sleeping; later polls sleep ``interval`` seconds (real time).

    Raises:
        AssertionError: still false after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    polls = 0
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        polls += 1
        await asyncio.sleep(0 if polls < 100 else interval)


class Gate:
    """An event that handlers wait on, which opens by itself after ``timeout`` so that no
    scenario can hang on a handler that is never released."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._event = asyncio.Event()
        self.timed_out = False

    @property
    def is_open(self) -> bool:
        """Whether the gate was opened (or gave up waiting)."""
        return self._event.is_set()

    def open(self) -> None:
        """Let every waiter through, now and later."""
        self._event.set()

    async def wait(self) -> None:
        """Wait until the gate opens, or ``timeout`` passes (then it stays open)."""
        if self._event.is_set():
            return
        try:
            await asyncio.wait_for(self._event.wait(), self.timeout)
        except TimeoutError:
            self.timed_out = True
            self._event.set()
