"""The publisher's circuit breaker, on a fake clock."""

from __future__ import annotations

from message_bus.adapters.nats import CircuitBreaker


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def open_breaker(clock: FakeClock, threshold: int = 3, cooldown: float = 10.0) -> CircuitBreaker:
    breaker = CircuitBreaker(threshold, cooldown, clock)
    for _ in range(threshold):
        assert breaker.before() is None
        breaker.failure()
    return breaker


def test_stays_closed_below_the_threshold() -> None:
    breaker = CircuitBreaker(3, 10.0, FakeClock())
    for _ in range(2):
        breaker.failure()

    assert breaker.before() is None
    assert breaker.state == "closed"


def test_a_success_resets_the_count_of_consecutive_failures() -> None:
    breaker = CircuitBreaker(3, 10.0, FakeClock())
    breaker.failure()
    breaker.failure()
    breaker.success()
    breaker.failure()
    breaker.failure()

    assert breaker.state == "closed"


def test_opens_after_threshold_failures_and_fails_fast_with_the_remaining_cooldown() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 4.0

    assert breaker.state == "open"
    assert breaker.before() == 6.0


def test_after_the_cooldown_lets_exactly_one_probe_through() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 10.0

    assert breaker.state == "half_open"
    assert breaker.before() is None
    retry_after = breaker.before()
    assert retry_after is not None
    assert retry_after > 0


def test_a_successful_probe_closes_it() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 10.0
    assert breaker.before() is None

    breaker.success()

    assert breaker.state == "closed"
    assert breaker.before() is None


def test_a_failed_probe_opens_it_for_another_cooldown() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 10.0
    assert breaker.before() is None

    breaker.failure()

    assert breaker.state == "open"
    assert breaker.before() == 10.0


def test_a_cancelled_probe_lets_the_next_call_probe() -> None:
    clock = FakeClock()
    breaker = open_breaker(clock)
    clock.now += 10.0
    assert breaker.before() is None

    breaker.release()

    assert breaker.before() is None


def test_threshold_zero_never_opens() -> None:
    breaker = CircuitBreaker(0, 10.0, FakeClock())
    for _ in range(100):
        breaker.failure()

    assert breaker.state == "closed"
    assert breaker.before() is None


def test_clean_says_whether_a_success_would_change_anything() -> None:
    breaker = CircuitBreaker(3, 10.0, FakeClock())
    assert breaker.clean

    breaker.failure()
    assert not breaker.clean
    assert breaker.state == "closed"

    breaker.success()
    assert breaker.clean


def test_calls_in_flight_together_that_fail_with_one_outage_count_once() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    started = breaker.now()  # ten concurrent calls begin
    clock.now += 5.0  # and all fail when their deadline passes
    for _ in range(10):
        breaker.failure(started)

    assert breaker.state == "closed"


def test_calls_that_fail_one_after_the_other_open_it() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(3, 10.0, clock)
    for _ in range(3):
        started = breaker.now()
        clock.now += 5.0
        breaker.failure(started)

    assert breaker.state == "open"


def test_a_stale_call_failing_while_half_open_does_not_spoil_the_probe() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(1, 10.0, clock)
    stale = breaker.now()
    clock.now += 1.0
    breaker.failure(breaker.now())
    clock.now += 10.0
    assert breaker.before() is None  # the probe goes out

    breaker.failure(stale)  # began before the outage was seen

    assert breaker.state == "half_open"
    breaker.success()
    assert breaker.state == "closed"
