"""In-memory streams: encoded messages by sequence, max-age expiry, and deduplication."""

from __future__ import annotations

from collections import deque

from message_bus.domain.catalog import StreamSpec
from message_bus.domain.codec import H_MSG_ID, Encoded

_COMPACT_AFTER = 4096
_NEVER = float("inf")


class Entry:
    """One stored message: the encoded form, when it was stored and when it expires
    (clock seconds)."""

    __slots__ = ("encoded", "expires_at", "stored_at")

    def __init__(self, encoded: Encoded, stored_at: float, expires_at: float) -> None:
        self.encoded = encoded
        self.stored_at = stored_at
        self.expires_at = expires_at


class Stream:
    """A stream with Limits retention: messages by sequence until ``max_age``.

    Sequences start at 1 and are never reused. Expired messages are dropped lazily
    (whenever the stream is written or read), so expiry needs no timer and is exact
    with respect to the clock; ``expires_at`` is when the oldest message expires, so a
    reader calls :meth:`expire` only when something is due.
    """

    __slots__ = (
        "_base",
        "_dedup",
        "_dedup_expiry",
        "_entries",
        "duplicate_window",
        "expires_at",
        "first_seq",
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
        self.expires_at = _NEVER
        self._entries: list[Entry | None] = []
        self._base = 1  # sequence of _entries[0]
        self._dedup: dict[str, int] = {}
        self._dedup_expiry: deque[tuple[float, str]] = deque()

    def __len__(self) -> int:
        return self.last_seq - self.first_seq + 1

    def store(self, encoded: Encoded, now: float) -> tuple[int, bool]:
        """Store ``encoded`` unless its ``Nats-Msg-Id`` is inside the duplicate window.

        Returns:
            (sequence, duplicate): the new sequence, or the original one and True.
        """
        if now >= self.expires_at:
            self.expire(now)
        message_id = encoded.headers.get(H_MSG_ID)
        dedup = self._dedup
        if message_id is not None:
            expiry = self._dedup_expiry
            while expiry and expiry[0][0] <= now:
                del dedup[expiry.popleft()[1]]
            original = dedup.get(message_id)
            if original is not None:
                return original, True
            expiry.append((now + self.duplicate_window, message_id))
        self.last_seq = seq = self.last_seq + 1
        if message_id is not None:
            dedup[message_id] = seq
        entry = Entry(encoded, now, now + self.max_age)
        self._entries.append(entry)
        if self.expires_at == _NEVER:
            self.expires_at = entry.expires_at
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
        if now < self.expires_at:
            return
        entries, base = self._entries, self._base
        first, last = self.first_seq, self.last_seq
        while first <= last:
            entry = entries[first - base]
            assert entry is not None  # the live range holds entries
            if entry.expires_at > now:
                self.expires_at = entry.expires_at
                break
            entries[first - base] = None
            first += 1
        else:
            self.expires_at = _NEVER
        self.first_seq = first
        dropped = first - base
        if dropped >= _COMPACT_AFTER and dropped * 2 >= len(entries):
            del entries[:dropped]
            self._base = first

    def first_stored_at(self, when: float) -> int:
        """The sequence of the first live message stored at or after clock time ``when``
        (``last_seq + 1`` if none): store times grow with sequences, so a bisection."""
        low, high = self.first_seq, self.last_seq + 1
        while low < high:
            middle = (low + high) // 2
            if self.entry(middle).stored_at >= when:
                high = middle
            else:
                low = middle + 1
        return low

    def entries_from(self, seq: int, limit: int) -> list[tuple[int, Entry]]:
        """Up to ``limit`` live entries from sequence ``seq`` on, oldest first."""
        start = max(seq, self.first_seq)
        stop = min(self.last_seq, start + limit - 1)
        return [(s, self.entry(s)) for s in range(start, stop + 1)]
