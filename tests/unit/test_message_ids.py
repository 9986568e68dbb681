"""The pooled UUIDv7 generator: well-formed, ordered, never reusing random bits (hypothesis)."""

from __future__ import annotations

import itertools
import os
import random
import sys
import threading
from collections.abc import Callable, Iterator
from uuid import UUID

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from message_bus.domain.errors import ValidationError
from message_bus.domain.ids import (
    DEFAULT_POOL_BYTES,
    MIN_POOL_BYTES,
    UUIDv7Generator,
    derived_message_id,
    new_message_id,
    uuid7_timestamp_ms,
)

START_MS = 1_700_000_000_000
RFC_VARIANT = "specified in RFC 4122"  # what uuid calls RFC 9562's variant 0b10


class RecordingRandom:
    """A seeded stand-in for ``os.urandom`` that keeps every draw it handed out."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)
        self.draws: list[bytes] = []

    def __call__(self, size: int) -> bytes:
        drawn = self._random.randbytes(size)
        self.draws.append(drawn)
        return drawn


class SteppingClock:
    """A clock that reads ``START_MS`` plus the running sum of the steps given."""

    def __init__(self, steps: list[int]) -> None:
        self._steps: Iterator[int] = iter(steps)
        self.now = START_MS
        self.readings: list[int] = []

    def __call__(self) -> int:
        self.now += next(self._steps, 0)
        self.readings.append(self.now)
        return self.now


def assert_well_formed(message_id: str) -> UUID:
    assert len(message_id) == 36
    assert message_id == message_id.lower()
    parsed = UUID(message_id)
    assert str(parsed) == message_id
    assert parsed.version == 7
    assert parsed.variant == RFC_VARIANT
    return parsed


def counter_of(message_id: str) -> int:
    return (UUID(message_id).int >> 64) & 0xFFF


def random_digits(message_id: str) -> str:
    """The 15 hex digits of ``rand_b`` that are random as a whole (after the variant)."""
    return message_id[20:23] + message_id[24:]


clock_steps = st.lists(
    st.one_of(
        st.just(0),  # the clock stalls
        st.integers(min_value=1, max_value=3),
        st.integers(min_value=-50, max_value=-1),  # the clock steps back
    ),
    max_size=300,
)


@settings(max_examples=60, deadline=None)
@given(steps=clock_steps, pool_bytes=st.integers(MIN_POOL_BYTES, 64), seed=st.integers(0, 2**32))
def test_ids_are_uuid7s_in_creation_order_whatever_the_clock_does(
    steps: list[int], pool_bytes: int, seed: int
) -> None:
    clock = SteppingClock(steps)
    generate = UUIDv7Generator(clock, pool_bytes=pool_bytes, random_bytes=RecordingRandom(seed))
    ids = [generate() for _ in range(len(steps) + 1)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    highest = -1
    for message_id, reading in zip(ids, clock.readings, strict=True):
        assert_well_formed(message_id)
        highest = max(highest, reading)
        assert (
            uuid7_timestamp_ms(message_id) == highest
        )  # the latest reading so far (no borrowing: < 4096 ids)


@settings(max_examples=10, deadline=None)
@given(pool_bytes=st.integers(MIN_POOL_BYTES, 40), seed=st.integers(0, 2**32))
def test_an_exhausted_counter_borrows_the_next_millisecond_and_stays_ordered(
    pool_bytes: int, seed: int
) -> None:
    generate = UUIDv7Generator(
        lambda: START_MS, pool_bytes=pool_bytes, random_bytes=RecordingRandom(seed)
    )
    ids = [generate() for _ in range(3 * 0x1000)]
    assert ids == sorted(ids)
    first_counter = counter_of(ids[0])
    assert first_counter <= 0x7FF  # seeded with 11 random bits: room to count on
    borrowed = [i for i, message_id in enumerate(ids) if uuid7_timestamp_ms(message_id) > START_MS]
    first_borrowed = 0x1000 - first_counter
    assert borrowed[0] == first_borrowed
    assert uuid7_timestamp_ms(ids[first_borrowed]) == START_MS + 1
    assert counter_of(ids[first_borrowed]) == 0
    again = first_borrowed + 0x1000  # a full millisecond of counter values later
    assert uuid7_timestamp_ms(ids[again - 1]) == START_MS + 1
    assert uuid7_timestamp_ms(ids[again]) == START_MS + 2
    assert counter_of(ids[again]) == 0
    for message_id in ids[::0x100]:
        assert_well_formed(message_id)


@settings(max_examples=40, deadline=None)
@given(
    pool_bytes=st.integers(MIN_POOL_BYTES, 80),
    count=st.integers(1, 400),
    steps=clock_steps,
    seed=st.integers(0, 2**32),
)
def test_every_random_digit_comes_from_a_draw_and_none_serves_twice(
    pool_bytes: int, count: int, steps: list[int], seed: int
) -> None:
    source = RecordingRandom(seed)
    generate = UUIDv7Generator(SteppingClock(steps), pool_bytes=pool_bytes, random_bytes=source)
    ids = [generate() for _ in range(count)]
    assert all(len(drawn) == pool_bytes for drawn in source.draws)
    pools = [drawn.hex() for drawn in source.draws]
    # Each id's digits are one slice of one pool, taken after the previous id's slice:
    # walk the pools in order and find them in sequence, never stepping back.
    pool_index, position = 0, 0
    for message_id in ids:
        digits = random_digits(message_id)
        while True:
            assert pool_index < len(pools), f"digits {digits} of {message_id} in no later pool"
            pool = pools[pool_index]
            found = pool.find(digits, position)
            if found >= 0:
                # right after the variant digit, or after a new millisecond's 3-digit seed
                assert found - position in (1, 4), f"{message_id} skipped pool digits"
                assert message_id[19] == "89ab"[int(pool[found - 1], 16) & 0b11]
                position = found + len(digits)
                break
            pool_index, position = pool_index + 1, 0
    # A pool is drawn anew only when its rest cannot serve one more id (19 digits at most).
    ids_per_pool = 2 * pool_bytes // 19
    assert len(source.draws) <= -(-count // ids_per_pool)


def test_a_hundred_thousand_ids_never_repeat_random_bits() -> None:
    generate = UUIDv7Generator()
    ids = [generate() for _ in range(100_000)]
    assert len({random_digits(message_id) for message_id in ids}) == len(ids)
    assert ids == sorted(ids)
    small = UUIDv7Generator(pool_bytes=MIN_POOL_BYTES)  # a fresh pool for every id
    more = [small() for _ in range(20_000)]
    assert len({random_digits(message_id) for message_id in more}) == len(more)


@pytest.mark.parametrize("ticking", [False, True], ids=["wall-clock", "new-ms-every-id"])
def test_threads_sharing_one_generator_get_distinct_ordered_ids(ticking: bool) -> None:
    # A clock that moves on at every reading makes every id start a millisecond, the
    # longest path through the generator's state.
    clock = itertools.count(START_MS).__next__ if ticking else None
    generate = UUIDv7Generator(clock, pool_bytes=64)
    per_thread: list[list[str]] = [[] for _ in range(4)]
    start = threading.Barrier(len(per_thread))

    def produce(into: list[str]) -> None:
        start.wait(timeout=30)
        into.extend(generate() for _ in range(20_000))

    threads = [threading.Thread(target=produce, args=(into,)) for into in per_thread]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
            assert not thread.is_alive(), "id-generating thread did not finish within 60 s"
    finally:
        sys.setswitchinterval(interval)
    everything = [message_id for made in per_thread for message_id in made]
    assert len(set(everything)) == len(everything) == 80_000
    assert len({random_digits(message_id) for message_id in everything}) == 80_000
    for made in per_thread:
        assert made == sorted(made)  # each thread's ids in its own creation order


def _id_from_forked_child(generate: Callable[[], str]) -> str:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the child
        try:
            os.write(write_end, generate().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        made = pipe.read().decode()
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return made


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_draws_its_own_pool_instead_of_repeating_the_parents_ids() -> None:
    generate = UUIDv7Generator(lambda: START_MS)
    generate()  # the parent has a pool before the fork
    in_child = _id_from_forked_child(generate)
    in_parent = generate()
    assert_well_formed(in_child)
    assert random_digits(in_child) != random_digits(in_parent)
    assert in_child != in_parent


@pytest.mark.parametrize("pool_bytes", [MIN_POOL_BYTES - 1, 0, -8, 10.0, "8192", True, None])
def test_an_unusable_pool_size_is_refused(pool_bytes: object) -> None:
    with pytest.raises(ValidationError) as raised:
        UUIDv7Generator(pool_bytes=pool_bytes)  # type: ignore[arg-type]
    assert raised.value.field == "pool_bytes"
    assert raised.value.value == pool_bytes


def test_the_process_wide_generator_and_the_helpers_still_agree() -> None:
    message_id = new_message_id()
    assert_well_formed(message_id)
    assert abs(uuid7_timestamp_ms(message_id) - UUID(message_id).int // 2**80) == 0
    derived = derived_message_id(message_id, 3)
    assert_well_formed(derived)
    assert uuid7_timestamp_ms(derived) == uuid7_timestamp_ms(message_id)
    assert DEFAULT_POOL_BYTES >= MIN_POOL_BYTES
