"""In-memory streams: encoded messages by sequence, max-age expiry, and deduplication."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from message_bus.domain.catalog import StreamSpec
from message_bus.domain.codec import H_MSG_ID, Encoded

if TYPE_CHECKING:
    from ._consumer import Group

_COMPACT_AFTER = 4096


class Entry:
    """One stored message: the encoded form and when it was stored (clock seconds)."""

    __slots__ = ("encoded", "stored_at")

    def __init__(self, encoded: Encoded, stored_at: float) -> None:
        self.encoded = encoded
        self.stored_at = stored_at


class Stream:
    """A stream with Limits retention: messages by sequence until ``max_age``.

    Sequences start at 1 and are never reused. Expired messages are dropped lazily
    (whenever the stream is written or read), so expiry needs no timer and is exact
    with respect to the clock.
    """

    __slots__ = (
        "_base",
        "_dedup",
        "_dedup_expiry",
        "_entries",
        "duplicate_window",
        "first_seq",
        "groups",
        "last_seq",
        "max_age",
        "name",
        "spec",
    )

    def __init__(self, spec: StreamSpec, duplicate_window: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.max_age = spec.max_age
        self.duplicate_window = duplicate_window
        self.first_seq = 1
        self.last_seq = 0
        self._entries: list[Entry | None] = []
        self._base = 1  # sequence of _entries[0]
        self._dedup: dict[str, int] = {}
        self._dedup_expiry: deque[tuple[float, str]] = deque()
        self.groups: list[Group] = []

    def __len__(self) -> int:
        return self.last_seq - self.first_seq + 1

    def store(self, encoded: Encoded, now: float) -> tuple[int, bool]:
        """Store ``encoded`` unless its ``Nats-Msg-Id`` is inside the duplicate window.

        Returns:
            (sequence, duplicate): the new sequence, or the original one and True.
        """
        self.expire(now)
        message_id = encoded.headers.get(H_MSG_ID)
        if message_id is not None:
            expiry = self._dedup_expiry
            if expiry and expiry[0][0] <= now:
                self._forget(now)
            original = self._dedup.get(message_id)
            if original is not None:
                return original, True
        self.last_seq = seq = self.last_seq + 1
        self._entries.append(Entry(encoded, now))
        if message_id is not None:
            self._dedup[message_id] = seq
            self._dedup_expiry.append((now + self.duplicate_window, message_id))
        return seq, False

    def get(self, seq: int) -> Entry | None:
        """The entry with sequence ``seq``, or None if it expired or never existed."""
        if seq < self.first_seq or seq > self.last_seq:
            return None
        return self._entries[seq - self._base]

    def entry(self, seq: int) -> Entry:
        """The entry with sequence ``seq``; the caller checked first_seq <= seq <= last_seq."""
        return self._entries[seq - self._base]  # type: ignore[return-value]  # live range

    def expire(self, now: float) -> None:
        """Drop messages older than ``max_age``."""
        first = self.first_seq
        if first > self.last_seq:
            return
        entries, base = self._entries, self._base
        cutoff = now - self.max_age
        if entries[first - base].stored_at > cutoff:  # type: ignore[union-attr]  # live range
            return
        last = self.last_seq
        while first <= last and entries[first - base].stored_at <= cutoff:  # type: ignore[union-attr]
            entries[first - base] = None
            first += 1
        self.first_seq = first
        dropped = first - base
        if dropped >= _COMPACT_AFTER and dropped * 2 >= len(entries):
            del entries[:dropped]
            self._base = first

    def _forget(self, now: float) -> None:
        expiry, dedup = self._dedup_expiry, self._dedup
        while expiry and expiry[0][0] <= now:
            del dedup[expiry.popleft()[1]]

    def entries_from(self, seq: int, limit: int) -> list[tuple[int, Entry]]:
        """Up to ``limit`` live entries from sequence ``seq`` on, oldest first."""
        start = max(seq, self.first_seq)
        stop = min(self.last_seq, start + limit - 1)
        return [(s, self.entry(s)) for s in range(start, stop + 1)]
