"""The demo's progress display: a bar redrawn in place on a terminal, plain lines otherwise."""

from __future__ import annotations

import shutil
from typing import TextIO

from ..demo import DemoProgress

__all__ = ["BAR_WIDTH", "ProgressPrinter", "bar", "progress_text"]

BAR_WIDTH = 30
_CLEAR_LINE = "\r\x1b[K"
"""ANSI: back to the start of the line, erase it."""


def bar(done: int, total: int, width: int = BAR_WIDTH) -> str:
    """``[#####.....]``: ``width`` cells, filled in proportion to ``done`` of ``total``
    (clamped to 0..total; an empty total counts as complete)."""
    if width < 1:
        raise ValueError(f"width must be >= 1, not {width}")
    fraction = 1.0 if total <= 0 else min(max(done, 0), total) / total
    filled = int(fraction * width)
    return f"[{'#' * filled}{'.' * (width - filled)}]"


def progress_text(p: DemoProgress, width: int = BAR_WIDTH) -> str:
    """One line: elapsed time, the bar of netted payments with its percentage, then
    published, proposals, redeliveries and dead letters."""
    percent = 100 if p.payments <= 0 else min(100, 100 * max(p.netted, 0) // p.payments)
    return (
        f"[{p.elapsed:5.1f}s] {bar(p.netted, p.payments, width)} {percent:3d}%"
        f"  netted {p.netted}/{p.payments}"
        f"  published {p.published}/{p.payments}"
        f"  proposals {p.proposals}"
        f"  redelivered {p.redelivered}"
        f"  dead-lettered {p.dead_lettered}"
    )


class ProgressPrinter:
    """Shows a demo's progress on ``stream``.

    On a terminal each report redraws one line in place (``\\r``, erase line), cut to
    the terminal's width so that it never wraps, and the last one (``done``), or
    :meth:`close`, ends it with a newline. Elsewhere (a pipe, a log file) each report
    is a line of its own, whole.

    Args:
        stream: where to write.
        tty: whether ``stream`` is a terminal (default: ``stream.isatty()``).
        columns: the terminal's width (default: as the terminal reports it).
    """

    def __init__(
        self, stream: TextIO, *, tty: bool | None = None, columns: int | None = None
    ) -> None:
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.columns = shutil.get_terminal_size().columns if columns is None else columns
        self._open = False

    @property
    def interval(self) -> float:
        """Seconds between reports that suit this output: 0.1 on a terminal, else 1."""
        return 0.1 if self.tty else 1.0

    def __call__(self, p: DemoProgress) -> None:
        text = progress_text(p)
        if self.tty:
            self.stream.write(f"{_CLEAR_LINE}{text[: max(self.columns - 1, 1)]}")
            self._open = not p.done
            if p.done:
                self.stream.write("\n")
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End a line left open on a terminal (the run stopped before its last report)."""
        if self._open:
            self.stream.write("\n")
            self.stream.flush()
            self._open = False
