"""The progress of a stream backup or restore: a bar on a terminal, plain lines otherwise."""

from __future__ import annotations

from typing import TextIO

from .progress import bar

__all__ = ["PLAIN_STEP", "TransferProgress", "size_text"]

PLAIN_STEP = 25
"""Off a terminal, a line is written each time a transfer passes this many percent."""
_CLEAR_LINE = "\r\x1b[K"


def size_text(size: int) -> str:
    """``size`` bytes, human readable (``512 B``, ``1.5 KiB``, ``3.2 MiB``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


class TransferProgress:
    """Reports ``(stream, done, total)`` calls as a progress bar per stream.

    On a terminal the bar is redrawn in place whenever its percentage changes and ends
    with a newline when the stream is done. Elsewhere (a pipe, a log) a plain line is
    written each time a transfer passes a multiple of :data:`PLAIN_STEP` percent, short
    of 100 (the command's own line says when a stream is done).

    Args:
        verb: what is happening (``backup``, ``restore``).
        stream: where to write.
        tty: whether ``stream`` is a terminal (default: ``stream.isatty()``).
    """

    def __init__(self, verb: str, stream: TextIO, *, tty: bool | None = None) -> None:
        self.verb = verb
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self._shown: dict[str, int] = {}

    def __call__(self, name: str, done: int, total: int) -> None:
        percent = 100 if total <= 0 else min(100, 100 * max(done, 0) // total)
        last = self._shown.get(name, -1)
        if self.tty:
            if percent == last:
                return
            line = f"{self.verb} {name} {bar(done, total)} {percent:3d}%  {size_text(done)}"
            self.stream.write(_CLEAR_LINE + line + ("\n" if percent == 100 else ""))
        else:
            step = percent // PLAIN_STEP * PLAIN_STEP
            if percent == 100 or step <= max(last, 0):
                self._shown[name] = max(last, step)
                return
            self.stream.write(f"{self.verb} {name}: {step}% ({size_text(done)})\n")
            percent = step
        self._shown[name] = percent
        self.stream.flush()
