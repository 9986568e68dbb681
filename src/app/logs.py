"""Log lines for operations: text or JSON, one line per record, redacted, repeats rate-limited.

Every record is one line. In ``json`` format it is one JSON object carrying ``time``
(RFC 3339, UTC), ``level``, ``logger``, ``message`` and, where known, the delivery being
handled (``message_id``, ``correlation_id``, ``subject``, ``group``, from
:func:`~message_bus.ports.subscriber.current_handling` or ``extra=``) and the active
OpenTelemetry span (``trace_id``, ``span_id``, hex as in ``traceparent``). Any other
``extra=`` field is added as it is. In ``text`` format a multi-line message or
traceback is joined with `` | ``.

Secrets are redacted from every string shown (URL userinfo, and the values the
``redact`` function is given). Under a fault the same error repeats: the
:class:`RepeatLimiter` lets the first record of a logger, level and message template
(with the same arguments, numbers aside) through, counts the others for
``repeat_window`` seconds, then writes one summary (``... (repeated N times)``, JSON
field ``repeated``).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import IO, Any, Literal

from opentelemetry import trace

from message_bus.domain.redaction import redact_text
from message_bus.ports.subscriber import current_handling

__all__ = [
    "CONTEXT_FIELDS",
    "DEFAULT_REPEAT_WINDOW",
    "LOG_FORMATS",
    "TEXT_FORMAT",
    "DeliveryContextFilter",
    "JsonFormatter",
    "LineHandler",
    "LogFormat",
    "RepeatLimiter",
    "TextFormatter",
    "configure_logging",
    "single_line",
]

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DEFAULT_REPEAT_WINDOW = 10.0
"""Seconds during which a repeated warning or error is counted instead of written."""

CONTEXT_FIELDS = ("message_id", "correlation_id", "subject", "group", "trace_id", "span_id")
"""The fields a record carries about the delivery and the span, where known."""

_LINE_SEPARATOR = " | "
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
"""Attributes every LogRecord has: anything else came with ``extra=``."""


def single_line(text: str) -> str:
    """``text`` with its lines (trailing blanks dropped) joined by `` | ``."""
    if "\n" not in text and "\r" not in text:
        return text
    return _LINE_SEPARATOR.join(line.rstrip() for line in text.splitlines() if line.strip())


class DeliveryContextFilter(logging.Filter):
    """Adds to each record the delivery being handled and the active span, where known.

    A field given with ``extra=`` is kept. Reads
    :func:`~message_bus.ports.subscriber.current_handling` (set by ``run_handler`` for
    every adapter) and OpenTelemetry's current span.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        handling = current_handling()
        if handling is not None:
            delivery, group = handling
            message = delivery.message
            _default(record, "message_id", message.id)
            _default(record, "correlation_id", message.correlation_id)
            _default(record, "subject", delivery.subject)
            _default(record, "group", group)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            _default(record, "trace_id", format(context.trace_id, "032x"))
            _default(record, "span_id", format(context.span_id, "016x"))
        return True


def _default(record: logging.LogRecord, name: str, value: object) -> None:
    if value is not None and getattr(record, name, None) is None:
        setattr(record, name, value)


class TextFormatter(logging.Formatter):
    """The text format, one line per record (traceback included), redacted.

    Args:
        fmt: the ``%``-style format.
        redact: applied to the formatted line, after URL userinfo is redacted.
    """

    def __init__(
        self, fmt: str | None = TEXT_FORMAT, *, redact: Callable[[str], str] = redact_text
    ) -> None:
        super().__init__(fmt)
        self._redact = redact

    def redact(self, text: str) -> str:
        """``text`` with URL userinfo and the secrets of ``redact`` replaced."""
        return self._redact(redact_text(text))

    def format(self, record: logging.LogRecord) -> str:
        return single_line(self.redact(super().format(record)))


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, context, ``extra=``.

    Args:
        redact: applied to every string of the object, after URL userinfo is redacted.
    """

    def __init__(self, *, redact: Callable[[str], str] = redact_text) -> None:
        super().__init__()
        self._redact = redact

    def redact(self, text: str) -> str:
        """``text`` with URL userinfo and the secrets of ``redact`` replaced."""
        return self._redact(redact_text(text))

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        entry: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": single_line(self.redact(record.getMessage())),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = self._plain(value)
        for name, value in record.__dict__.items():
            if name not in _STANDARD and name not in entry and not name.startswith("_"):
                entry[name] = self._plain(value)
        if record.exc_info:
            entry["exception"] = self.redact(self.formatException(record.exc_info))
        elif record.exc_text:
            entry["exception"] = self.redact(record.exc_text)
        if record.stack_info:
            entry["stack"] = self.redact(self.formatStack(record.stack_info))
        return json.dumps(entry, ensure_ascii=False, default=self._shown)

    def _plain(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, bool | int | float) or value is None:
            return value
        if isinstance(value, list | tuple):
            return [self._plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): self._plain(v) for k, v in value.items()}
        return self._shown(value)

    def _shown(self, value: object) -> str:
        return self.redact(str(value))


@dataclass
class _Window:
    start: float
    suppressed: int = 0
    last: logging.LogRecord | None = None


class RepeatLimiter:
    """Rate-limits repeated records: same logger, level, message template and arguments
    other than numbers (a retry delay, an attempt count).

    The first record of a key is written and opens a window of ``window`` seconds; the
    others in it are counted. The first record after the window (of any key, or
    :meth:`pending` at the end) brings the summary: the last counted record with
    `` (repeated N times)`` appended and ``repeated = N``. Records below ``level``
    are never limited.

    Args:
        window: seconds of a window; 0 writes every record.
        level: the lowest level limited (default WARNING: errors under a fault).
        clock: monotonic seconds (tests pass a fake).
    """

    def __init__(
        self,
        window: float = DEFAULT_REPEAT_WINDOW,
        *,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.level = level
        self._clock = clock
        self._windows: dict[tuple[str, int, str, tuple[str, ...]], _Window] = {}

    def admit(self, record: logging.LogRecord) -> list[logging.LogRecord]:
        """The records to write now, in order: summaries of ended windows, then
        ``record`` unless it is a repeat."""
        now = self._clock()
        written = self._ended(now)
        if self.window <= 0 or record.levelno < self.level:
            written.append(record)
            return written
        key = (record.name, record.levelno, str(record.msg), _identity(record.args))
        current = self._windows.get(key)
        if current is None:
            self._windows[key] = _Window(now)
            written.append(record)
        else:
            current.suppressed += 1
            current.last = record
        return written

    def pending(self) -> list[logging.LogRecord]:
        """Summaries of every window with counted repeats; the windows are closed."""
        summaries = [_summary(w) for w in self._windows.values() if w.last is not None]
        self._windows.clear()
        return summaries

    def _ended(self, now: float) -> list[logging.LogRecord]:
        summaries: list[logging.LogRecord] = []
        for key, current in list(self._windows.items()):
            if now - current.start >= self.window:
                del self._windows[key]
                if current.last is not None:
                    summaries.append(_summary(current))
        return summaries


def _identity(args: object) -> tuple[str, ...]:
    """What tells repeats apart besides the template: the arguments that are not numbers
    (a consumer, a subject, an error), so a retry delay or an attempt count that changes
    does not, and two consumers failing alike are counted apart."""
    if isinstance(args, Mapping):
        args = tuple(f"{k}={v}" for k, v in sorted(args.items(), key=lambda kv: str(kv[0])))
    if not isinstance(args, tuple):
        return ()
    return tuple(
        "" if isinstance(a, int | float) and not isinstance(a, bool) else str(a) for a in args
    )


def _summary(window: _Window) -> logging.LogRecord:
    last = window.last
    assert last is not None
    summary = logging.makeLogRecord(dict(last.__dict__))
    times = "time" if window.suppressed == 1 else "times"
    summary.msg = f"{last.getMessage()} (repeated {window.suppressed} {times})"
    summary.args = None
    summary.exc_info = None
    summary.exc_text = None
    summary.repeated = window.suppressed
    return summary


class LineHandler(logging.StreamHandler[IO[str]]):
    """Writes records one per line through a :class:`RepeatLimiter`, each with the
    delivery's and the span's fields (:class:`DeliveryContextFilter`).

    Closing it writes the summaries still pending.

    Args:
        stream: where lines go (default stderr).
        formatter: a :class:`TextFormatter` or :class:`JsonFormatter`.
        limiter: the rate limit of repeats (default: :data:`DEFAULT_REPEAT_WINDOW`).
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        formatter: logging.Formatter | None = None,
        limiter: RepeatLimiter | None = None,
    ) -> None:
        super().__init__(sys.stderr if stream is None else stream)
        self.setFormatter(formatter or TextFormatter())
        self.limiter = limiter or RepeatLimiter()
        self.addFilter(DeliveryContextFilter())

    def handle(self, record: logging.LogRecord) -> bool:
        if not self.filter(record):
            return False
        self.acquire()
        try:
            for written in self.limiter.admit(record):
                self.emit(written)
        finally:
            self.release()
        return True

    def close(self) -> None:
        self.acquire()
        try:
            for summary in self.limiter.pending():
                self.emit(summary)
        finally:
            self.release()
        super().close()


def configure_logging(
    log_format: LogFormat = "text",
    *,
    level: int = logging.INFO,
    stream: IO[str] | None = None,
    repeat_window: float = DEFAULT_REPEAT_WINDOW,
    redact: Callable[[str], str] = redact_text,
    secrets: Iterable[str | None] = (),
) -> LineHandler | None:
    """Log to ``stream`` (stderr) in ``log_format`` unless logging is configured already
    (the root logger has a handler, as :func:`logging.basicConfig` decides); return the
    handler installed, or None.

    Args:
        log_format: ``text`` or ``json``.
        level: the root logger's level.
        stream: where lines go (default stderr).
        repeat_window: seconds a repeated warning or error is counted (0: never).
        redact: applied to every string shown, after URL userinfo is redacted.
        secrets: values never shown, besides what ``redact`` hides.
    """
    if logging.getLogger().handlers:
        return None
    hidden = tuple(s for s in secrets if s)

    def shown(text: str) -> str:
        return redact_text(redact(text), hidden) if hidden else redact(text)

    formatter: logging.Formatter = (
        JsonFormatter(redact=shown) if log_format == "json" else TextFormatter(redact=shown)
    )
    handler = LineHandler(stream, formatter=formatter, limiter=RepeatLimiter(repeat_window))
    logging.basicConfig(level=level, handlers=[handler])
    return handler
