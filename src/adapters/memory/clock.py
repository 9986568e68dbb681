"""Time for the in-memory broker: the system clock, or a manual clock that tests advance.

Everything time-driven in :class:`~message_bus.adapters.memory.InMemoryBroker` (ack-wait
expiry, NAK delays, max age, the duplicate window, request timeouts) reads ``now()`` and
schedules through ``call_at`` of one :class:`Clock`, so a :class:`ManualClock` makes all of
it deterministic: ``advance(seconds)`` runs every timer that falls due, in deadline order,
before it returns.
"""

from __future__ import annotations

import heapq
import itertools
from abc import ABC, abstractmethod
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Protocol

from message_bus.adapters.ordered.clock import LoopClock


class Timer(Protocol):
    """A scheduled callback that can still be cancelled."""

    def cancel(self) -> None:
        """Do not run the callback (no-op if it already ran)."""


class Clock(ABC):
    """A monotonic clock that can schedule callbacks."""

    @abstractmethod
    def now(self) -> float:
        """Monotonic seconds; only differences are meaningful."""

    @abstractmethod
    def utcnow(self) -> datetime:
        """Wall-clock time, UTC (used for timestamps such as a dead letter's ``failed_at``)."""

    @abstractmethod
    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        """Run ``callback`` once ``now()`` reaches ``when`` (at once if already past)."""


class SystemClock(LoopClock, Clock):
    """Real time: ``time.monotonic`` and the running event loop's timers."""


_COMPACT_MIN = 1024
"""Scheduled timers a ManualClock holds before it drops the cancelled ones."""


class _ManualTimer:
    __slots__ = ("callback", "cancelled")

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock(Clock):
    """Fake time that moves only when :meth:`advance` is called.

    ``advance`` runs the callbacks that fall due synchronously, each with ``now()`` set to
    its own deadline, then leaves ``now()`` at the target. Callbacks only change broker
    state and wake the broker's workers; the handlers they make runnable run once the
    event loop gets control, e.g. in ``await broker.settle()``.

    Args:
        start: the wall-clock time ``utcnow()`` reports before any advance (default:
            the real time at construction).
    """

    def __init__(self, start: datetime | None = None) -> None:
        if start is not None and start.tzinfo is None:
            raise ValueError("start must be timezone-aware")
        self._start = (start or datetime.now(UTC)).astimezone(UTC)
        self._now = 0.0
        self._timers: list[tuple[float, int, _ManualTimer]] = []
        self._order = itertools.count()
        self._compact_at = _COMPACT_MIN

    def now(self) -> float:
        return self._now

    def utcnow(self) -> datetime:
        return self._start + timedelta(seconds=self._now)

    def call_at(self, when: float, callback: Callable[[], None]) -> Timer:
        timer = _ManualTimer(callback)
        timers = self._timers
        if len(timers) >= self._compact_at:  # most are cancelled ones (every handler arms
            self._compact()  # a max_handler_time timer): keep the heap bounded
        heapq.heappush(timers, (when, next(self._order), timer))
        return timer

    def _compact(self) -> None:
        timers = self._timers  # in place: an advance in progress holds this list
        timers[:] = [item for item in timers if not item[2].cancelled]
        heapq.heapify(timers)
        self._compact_at = max(_COMPACT_MIN, 2 * len(timers))

    @property
    def held_timers(self) -> int:
        """Timers held, cancelled ones included (they are dropped now and then)."""
        return len(self._timers)

    @property
    def pending_timers(self) -> int:
        """Timers scheduled and not cancelled (nothing runs them until an advance)."""
        return sum(1 for _, _, timer in self._timers if not timer.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds`` and run every timer due by then, in order.

        A timer scheduled by a callback runs in the same advance if it is due by the
        target time.

        Raises:
            ValueError: ``seconds`` is negative.
        """
        if seconds < 0:
            raise ValueError(f"cannot go back in time ({seconds} s)")
        target = self._now + seconds
        timers = self._timers
        while timers and timers[0][0] <= target:
            when, _, timer = heapq.heappop(timers)
            if timer.cancelled:
                continue
            timer.cancelled = True
            self._now = max(self._now, when)
            timer.callback()
        self._now = target
