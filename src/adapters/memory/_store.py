"""In-memory streams: messages by sequence, max-age expiry, deduplication and limits."""

from __future__ import annotations

from collections import deque

from message_bus.domain.catalog import StreamSpec
from message_bus.domain.codec import H_MSG_ID, Encoded

_COMPACT_AFTER = 4096
_NEVER = float("inf")


_OVERHEAD = 16
"""Bytes counted per message besides subject, headers and body (JetStream's file store
counts a record header of about this size): ``max_bytes`` is approximate in both."""


class Refused(Exception):
    """The stream refused a message: it is full (``discard=new``) or the message is
    bigger than ``max_msg_size``.

    Attributes:
        too_large: the message alone exceeds ``max_msg_size`` (else the stream is full).
    """

    def __init__(self, detail: str, *, too_large: bool = False) -> None:
        self.too_large = too_large
        super().__init__(detail)


def stored_size(encoded: Encoded) -> int:
    """The bytes a message counts against ``max_bytes``: subject, headers, body and a
    record overhead."""
    headers = sum(len(k) + len(v) + 4 for k, v in encoded.headers.items())
    return len(encoded.subject) + headers + len(encoded.body) + _OVERHEAD


def message_size(encoded: Encoded) -> int:
    """The bytes a message counts against ``max_msg_size``: headers and body."""
    return sum(len(k) + len(v) + 4 for k, v in encoded.headers.items()) + len(encoded.body)


class Entry:
    """One stored message: the encoded form, when it was stored and when it expires
    (clock seconds), and the bytes it counts against ``max_bytes``."""

    __slots__ = ("encoded", "expires_at", "size", "stored_at")

    def __init__(
        self, encoded: Encoded, stored_at: float, expires_at: float, size: int = 0
    ) -> None:
        self.encoded = encoded
        self.stored_at = stored_at
        self.expires_at = expires_at
        self.size = size


class Stream:
    """A stream with Limits retention: messages by sequence until ``max_age``, within
    the spec's ``max_msgs`` / ``max_bytes`` (``discard=new`` refuses a message that
    would exceed them, ``discard=old`` drops the oldest to make room) and
    ``max_msg_size``.

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
        "bytes",
        "duplicate_window",
        "expires_at",
        "first_seq",
        "last_seq",
        "limits",
        "max_age",
        "name",
        "spec",
    )

    def __init__(self, spec: StreamSpec, duplicate_window: float) -> None:
        self.spec = spec
        self.name = spec.name
        self.max_age = spec.max_age
        self.limits = spec.limits
        self.bytes = 0
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

        Raises:
            Refused: the stream is full and refuses new messages, or the message exceeds
                ``max_msg_size`` (a duplicate is answered first, as JetStream does).
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
        size = stored_size(encoded)
        self._make_room(encoded, size)
        if message_id is not None:
            self._dedup_expiry.append((now + self.duplicate_window, message_id))
        self.last_seq = seq = self.last_seq + 1
        if message_id is not None:
            dedup[message_id] = seq
        entry = Entry(encoded, now, now + self.max_age, size)
        self._entries.append(entry)
        self.bytes += size
        if self.expires_at == _NEVER:
            self.expires_at = entry.expires_at
        return seq, False

    def _make_room(self, encoded: Encoded, size: int) -> None:
        """Refuse ``encoded`` or drop the oldest messages so that it fits the limits."""
        limits = self.limits
        if limits.max_msg_size is not None and message_size(encoded) > limits.max_msg_size:
            raise Refused(
                f"stream {self.name}: message size exceeds maximum allowed "
                f"({limits.max_msg_size} bytes)",
                too_large=True,
            )
        max_msgs, max_bytes = limits.max_msgs, limits.max_bytes
        if max_msgs is None and max_bytes is None:
            return
        if limits.discard_policy == "new":
            if max_msgs is not None and len(self) + 1 > max_msgs:
                raise Refused(f"stream {self.name}: maximum messages exceeded ({max_msgs})")
            if max_bytes is not None and self.bytes + size > max_bytes:
                raise Refused(f"stream {self.name}: maximum bytes exceeded ({max_bytes})")
            return
        while len(self) > 0 and (
            (max_msgs is not None and len(self) + 1 > max_msgs)
            or (max_bytes is not None and self.bytes + size > max_bytes)
        ):
            self._drop_first()

    def _drop_first(self) -> None:
        """Delete the oldest live message (discard=old)."""
        entry = self.entry(self.first_seq)
        self.bytes -= entry.size
        self._entries[self.first_seq - self._base] = None
        self.first_seq += 1
        if len(self) == 0:
            self.expires_at = _NEVER
        else:
            self.expires_at = self.entry(self.first_seq).expires_at
        self._compact()

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
            self.bytes -= entry.size
            first += 1
        else:
            self.expires_at = _NEVER
        self.first_seq = first
        self._compact()

    def _compact(self) -> None:
        entries, first = self._entries, self.first_seq
        dropped = first - self._base
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
