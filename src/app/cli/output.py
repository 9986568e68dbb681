"""What the commands print: receipt lines, JSON message lines and aligned tables."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from message_bus.domain.catalog import NO_LIMITS, StreamSpec
from message_bus.domain.dead_letter import DeadLetter
from message_bus.domain.message import Message
from message_bus.ports import PublishReceipt

if TYPE_CHECKING:
    from message_bus.adapters.nats import StreamReport, StreamSummary

__all__ = [
    "catalog_table",
    "dead_letter_table",
    "message_json",
    "out",
    "receipt_line",
    "stream_report_table",
    "stream_table",
    "table",
]


def out(text: str = "") -> None:
    """Write ``text`` and a newline to stdout, flushed at once (progress shows live)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def receipt_line(receipt: PublishReceipt) -> str:
    """One line saying where a published message went, and whether it was a duplicate."""
    where = (
        f"stream {receipt.stream} seq {receipt.sequence}" if receipt.stream else "core (no stream)"
    )
    partition = "" if receipt.partition is None else f" partition {receipt.partition}"
    duplicate = " (duplicate: already stored, nothing new)" if receipt.duplicate else ""
    return f"published {receipt.message_id} to {receipt.subject}: {where}{partition}{duplicate}"


def message_json(message: Message, attempt: int | None = None) -> str:
    """``message`` as one compact JSON object; ``attempt`` is its delivery attempt, if known.

    Optional fields (correlation and causation ids, headers) appear only when set.
    """
    record: dict[str, Any] = {
        "id": message.id,
        "type": message.message_type.value,
        "subject": message.subject,
        "partition": message.partition,
        "created_at": message.created_at.isoformat(),
    }
    if attempt is not None:
        record["attempt"] = attempt
    if message.correlation_id is not None:
        record["correlation_id"] = message.correlation_id
    if message.causation_id is not None:
        record["causation_id"] = message.causation_id
    if message.headers:
        record["headers"] = dict(message.headers)
    record["payload"] = message.payload
    return msgspec.json.encode(record, enc_hook=str).decode()


def dead_letter_table(letters: Sequence[DeadLetter]) -> str:
    """The dead letters, one row each, with where they came from, why they failed and
    whether they were replayed; then the raw view of each whose original cannot be
    decoded (a foreign message): its subject, header block and body, escaped."""
    rows = [
        (
            d.dlq_sequence if d.dlq_sequence is not None else "-",
            d.message.message_type.value if d.message is not None else "(raw)",
            d.subject,
            f"{d.stream}#{d.sequence}",
            d.deliveries,
            d.consumer_group,
            d.failed_at.strftime("%Y-%m-%d %H:%M:%S"),
            _replayed(d),
            d.reason,
        )
        for d in letters
    ]
    headers = ("SEQ", "TYPE", "SUBJECT", "FROM", "DELIVERIES", "GROUP", "FAILED", "REPLAYED")
    lines = [_table(rows, (*headers, "REASON"))]
    for d in letters:
        if d.message is None and d.raw is not None:
            seq = d.dlq_sequence if d.dlq_sequence is not None else "-"
            lines.append(f"raw dead letter {seq}: subject {d.raw.subject}")
            lines.append(f"  headers: {_escaped(d.raw.header_block)}")
            lines.append(f"  body: {_escaped(d.raw.body)}")
    return "\n".join(lines)


def _replayed(letter: DeadLetter) -> str:
    replay = letter.replayed
    if replay is None:
        return "-"
    times = f" ({replay.count}x)" if replay.count > 1 else ""
    at = replay.replayed_at.strftime("%Y-%m-%d %H:%M:%S")
    return f"{at}->{replay.stream}#{replay.sequence}{times}"


def _escaped(data: bytes, limit: int = 2000) -> str:
    """``data`` on one line: printable ASCII as is, anything else escaped (\\r, \\x00...)."""
    text = repr(data[:limit])[2:-1]
    return text + (f"... ({len(data)} bytes)" if len(data) > limit else "")


def catalog_table(streams: Sequence[StreamSpec]) -> str:
    """The catalog's streams: name, subjects and how long they keep messages."""
    rows: list[tuple[str, ...]] = [
        (s.name, ",".join(s.subjects), _days(s.max_age)) for s in streams
    ]
    headers: tuple[str, ...] = ("STREAM", "SUBJECTS", "MAX AGE")
    if any(s.limits != NO_LIMITS for s in streams):  # a column only when a stream has limits
        rows = [(*row, s.limits.describe()) for row, s in zip(rows, streams, strict=True)]
        headers += ("LIMITS",)
    return _table(rows, headers)


def stream_table(summaries: Sequence[StreamSummary]) -> str:
    """The streams on a server with their state (and limits, when a stream has any)."""
    rows: list[tuple[object, ...]] = [
        (
            s.name,
            ",".join(s.subjects),
            s.messages,
            s.bytes,
            f"{s.first_sequence}..{s.last_sequence}",
            s.consumers,
            s.replicas,
            _days(s.max_age),
            f"{s.duplicate_window:g}s",
        )
        for s in summaries
    ]
    headers: tuple[str, ...] = ("STREAM", "SUBJECTS", "MESSAGES", "BYTES", "SEQUENCES")
    headers += ("CONSUMERS", "REPLICAS", "MAX AGE", "DEDUP")
    limited = [s for s in summaries if max(s.max_msgs, s.max_bytes, s.max_msg_size) > 0]
    if limited:  # columns only when a stream has limits
        rows = [
            (*row, _limit(s.max_msgs), _limit(s.max_bytes), _limit(s.max_msg_size), s.discard)
            for row, s in zip(rows, summaries, strict=True)
        ]
        headers += ("MAX MSGS", "MAX BYTES", "MAX MSG SIZE", "DISCARD")
    return _table(rows, headers)


def _limit(value: int) -> str:
    return "-" if value <= 0 else str(value)


def stream_report_table(reports: Sequence[StreamReport]) -> str:
    """What applying the catalog did to each stream, the drift it found, and the problems
    left (a column only when there are any)."""
    rows: list[tuple[str, ...]] = [(r.name, r.action, "; ".join(r.drift) or "-") for r in reports]
    headers: tuple[str, ...] = ("STREAM", "ACTION", "DRIFT")
    if any(r.problems for r in reports):
        rows = [(*row, "; ".join(r.problems) or "-") for row, r in zip(rows, reports, strict=True)]
        headers += ("PROBLEMS",)
    return _table(rows, headers)


def _days(seconds: float) -> str:
    return "forever" if seconds <= 0 else f"{seconds / 86400:g}d"


def table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    """``rows`` under ``headers``, each column left-aligned to its widest cell."""
    return _table(rows, headers)


def _table(rows: Sequence[Sequence[object]], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in cells:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)
