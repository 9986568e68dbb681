"""The publisher's circuit breaker: fail fast while the broker keeps failing."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

log = logging.getLogger("message_bus.nats.publisher")


class BreakerState(enum.StrEnum):
    """The state of a :class:`CircuitBreaker`."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    """Fails fast after ``threshold`` consecutive failed publishes, for ``cooldown`` s.

    Consecutive means one after the other in time: publishes that were in flight
    together and failed with one outage count once (see :meth:`failure`).

    Closed: everything passes. Open: everything fails with the remaining cooldown.
    After the cooldown it is half-open: one probe passes, every other call still fails
    fast; the probe's success closes it, its failure opens it again. Only failures
    that say the broker is unavailable count (timeouts, disconnects, no responders);
    a rejection such as "stream full" proves the broker is up and counts as success.
    ``threshold == 0`` disables the breaker.

    Attributes:
        clean: closed, with no failure counted since the last success: a call may pass
            and a success changes nothing (what the publish hot path checks).
    """

    CLOSED = BreakerState.CLOSED
    OPEN = BreakerState.OPEN
    HALF_OPEN = BreakerState.HALF_OPEN

    def __init__(
        self, threshold: int, cooldown: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.threshold = threshold
        self.cooldown = cooldown
        self.clean = True
        self._clock = clock
        self._failures = 0
        self._opened_at = 0.0
        self._last_failure = float("-inf")
        self._state = BreakerState.CLOSED
        self._probing = False

    @property
    def state(self) -> BreakerState:
        """``closed``, ``open`` or ``half_open`` (open turns half-open lazily)."""
        if self._state is BreakerState.OPEN and self._clock() >= self._opened_at + self.cooldown:
            return BreakerState.HALF_OPEN
        return self._state

    def before(self) -> float | None:
        """None if a call may proceed, else the seconds until the breaker lets one through."""
        if self._state is BreakerState.CLOSED:
            return None
        if self._state is BreakerState.OPEN:
            remaining = self._opened_at + self.cooldown - self._clock()
            if remaining > 0:
                return remaining
            self._state = BreakerState.HALF_OPEN
        if self._probing:
            return self.cooldown or 0.001
        self._probing = True
        return None

    def success(self) -> None:
        """A call succeeded (or was refused by a broker that is up): close."""
        self._failures = 0
        self._probing = False
        self._state = BreakerState.CLOSED
        self.clean = True

    def now(self) -> float:
        """The breaker's clock: what a call passes to :meth:`failure` as its start."""
        return self._clock()

    def failure(self, started: float | None = None) -> None:
        """A call failed because the broker is unavailable.

        Args:
            started: When the failed call began (:meth:`now`). Calls in flight together
                when an outage begins all fail with it: a call that began before the
                last counted failure was seen reports that outage again and is not
                counted again, so many concurrent callers do not open the breaker on
                one outage that a single caller would have ridden out. ``None``
                counts every failure.
        """
        if started is not None and started < self._last_failure:
            return
        self._last_failure = self._clock()
        self._failures += 1
        self.clean = False
        probe_failed = self._state is BreakerState.HALF_OPEN
        self._probing = False
        if probe_failed or (
            self._state is BreakerState.CLOSED
            and self.threshold
            and self._failures >= self.threshold
        ):
            if self._state is not BreakerState.OPEN:
                log.warning("circuit breaker open for %.1fs", self.cooldown)
            self._state = BreakerState.OPEN
            self._opened_at = self._clock()

    def release(self) -> None:
        """The call ended without an outcome (cancelled): let another probe through."""
        self._probing = False


__all__ = ["BreakerState", "CircuitBreaker"]
