"""Message ids: UUIDv7 (RFC 9562), time-ordered and monotonic within one process."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable
from uuid import UUID


class UUIDv7Generator:
    """Generates UUIDv7 strings whose order follows creation order in this process.

    The 48-bit Unix-millisecond timestamp leads; ``rand_a`` (12 bits) is a counter
    seeded randomly each millisecond (RFC 9562 method 1), so ids made in the same
    millisecond still sort in creation order; ``rand_b`` is random.
    """

    def __init__(self, clock_ms: Callable[[], int] | None = None) -> None:
        self._clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._last_ms = -1
        self._counter = 0
        self._lock = threading.Lock()

    def __call__(self) -> str:
        with self._lock:
            ms = self._clock_ms()
            if ms > self._last_ms:
                self._last_ms = ms
                self._counter = int.from_bytes(os.urandom(2), "big") & 0x7FF
            else:
                ms = self._last_ms
                self._counter += 1
                if self._counter > 0xFFF:  # counter exhausted: borrow the next millisecond
                    self._last_ms = ms = ms + 1
                    self._counter = 0
            counter = self._counter
        rand_b = int.from_bytes(os.urandom(8), "big") & 0x3FFFFFFFFFFFFFFF
        value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
        return str(UUID(int=value))


new_message_id = UUIDv7Generator()
"""The process-wide id generator used by :meth:`Message.new`."""


def uuid7_timestamp_ms(message_id: str) -> int:
    """The Unix-millisecond timestamp embedded in a UUIDv7 string."""
    return UUID(message_id).int >> 80


def derived_message_id(parent_id: str, index: int) -> str:
    """A UUIDv7 string that is always the same for the same ``(parent_id, index)``.

    The id of the ``index``-th message a handler returned for the message ``parent_id``:
    a redelivery of the parent that publishes its follow-ups again gives them the same
    ids, so the stream's duplicate window drops the second copy. The timestamp is the
    parent's when ``parent_id`` is a UUIDv7 (ids stay time-ordered), and the counter and
    random bits come from a BLAKE2b hash of ``parent_id`` and ``index``.

    Raises:
        ValueError: ``index`` is negative.
    """
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    try:
        parent = UUID(parent_id)
        ms = parent.int >> 80 if parent.version == 7 else None
    except ValueError:
        ms = None
    digest = hashlib.blake2b(f"{parent_id}\x00{index}".encode(), digest_size=16).digest()
    bits = int.from_bytes(digest, "big")
    if ms is None:
        ms = bits >> 80  # not a UUIDv7 parent: the timestamp bits are hashed too
    counter = (bits >> 64) & 0xFFF
    rand_b = bits & 0x3FFFFFFFFFFFFFFF
    value = (ms & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | counter << 64 | 0b10 << 62 | rand_b
    return str(UUID(int=value))
