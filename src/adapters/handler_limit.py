"""The time limit a handler runs under, cut off by its adapter's one timer."""

from __future__ import annotations

import asyncio
from types import TracebackType


class HandlerLimit:
    """The time limit of one running handler, and the context it runs under.

    Entered by the handler's task, it remembers that task; :meth:`cut_off` (called by
    the adapter's one timer at the earliest deadline) cuts the handler off by
    cancelling it (as ``asyncio.timeout`` does, without a timer or
    an ``asyncio.Timeout`` per handler), and leaving turns that cancellation into a
    ``TimeoutError``. Leaving also marks the limit ``done``.

    Attributes:
        deadline: when the handler is cut off, on the clock of whoever cuts it off.
        done: the handler returned (or was cancelled); nothing to cut off any more.
    """

    __slots__ = ("cut", "deadline", "done", "task")

    def __init__(self, deadline: float = 0.0) -> None:
        self.deadline = deadline
        self.done = False
        self.cut = False
        self.task: asyncio.Task[object] | None = None

    async def __aenter__(self) -> HandlerLimit:
        self.task = asyncio.current_task()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.done = True
        task, self.task = self.task, None
        if not self.cut or exc_type is not asyncio.CancelledError or task is None:
            return
        if task.uncancel() == 0:  # cancelled by the cut alone, not also by a stop
            raise TimeoutError from exc

    def expired(self) -> bool:
        """Whether the limit cut the handler off."""
        return self.cut

    def cut_off(self) -> None:
        """Cancels the handler, if it still runs under this limit."""
        task = self.task
        if not self.done and not self.cut and task is not None:
            self.cut = True
            task.cancel()


__all__ = ["HandlerLimit"]
