"""Starts the event loop a service or command runs on: uvloop when installed, else asyncio.

``DELTRAN_EVENT_LOOP`` chooses: ``auto`` (the default) takes uvloop when it can be
imported (``pip install 'deltran-message-bus[fast]'``) and plain asyncio otherwise;
``asyncio`` always takes asyncio; ``uvloop`` requires uvloop and fails with a
:class:`~message_bus.domain.errors.ValidationError` naming the variable when it is
missing, before any loop starts. The variable is read when a loop starts (not at
import), because the loop exists before the settings are loaded: ``Bus.run()``, the
runner and every ``deltran-bus`` command start through :func:`run`.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from message_bus.domain.errors import ValidationError

__all__ = [
    "EVENT_LOOPS",
    "EVENT_LOOP_ENV",
    "EventLoopChoice",
    "EventLoopName",
    "choose_event_loop",
    "run",
    "running_loop_name",
]

EVENT_LOOP_ENV = "DELTRAN_EVENT_LOOP"
"""Environment variable choosing the event loop: ``auto``, ``asyncio`` or ``uvloop``."""

EventLoopName = Literal["auto", "asyncio", "uvloop"]
EVENT_LOOPS: tuple[EventLoopName, ...] = get_args(EventLoopName)

T = TypeVar("T")


@dataclass(frozen=True)
class EventLoopChoice:
    """The loop a run starts: its implementation and how it was asked for.

    Attributes:
        name: the implementation that runs, ``asyncio`` or ``uvloop``.
        requested: what was asked for (``auto``, ``asyncio`` or ``uvloop``).
        factory: makes a new event loop of that implementation.
    """

    name: Literal["asyncio", "uvloop"]
    requested: EventLoopName
    factory: Callable[[], asyncio.AbstractEventLoop]


def choose_event_loop(
    requested: str | None = None, *, environ: Mapping[str, str] | None = None
) -> EventLoopChoice:
    """The event loop to start: ``requested``, else ``DELTRAN_EVENT_LOOP``, else ``auto``.

    Args:
        requested: ``auto``, ``asyncio`` or ``uvloop``; None reads the environment.
        environ: where to read ``DELTRAN_EVENT_LOOP`` (default ``os.environ``).

    Raises:
        ValidationError: the value is none of the three, or ``uvloop`` is asked for
            and cannot be imported; ``field`` names the variable (or ``event_loop``).
    """
    field = "event_loop"
    if requested is None:
        env = os.environ if environ is None else environ
        requested, field = env.get(EVENT_LOOP_ENV, "auto"), EVENT_LOOP_ENV
    value = requested.strip().lower()
    if value not in EVENT_LOOPS:
        raise ValidationError(field, requested, "must be one of auto, asyncio, uvloop")
    name: EventLoopName = value
    if name == "asyncio":
        return EventLoopChoice("asyncio", name, asyncio.new_event_loop)
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError as exc:
        if name == "uvloop":
            raise ValidationError(
                field,
                requested,
                f"uvloop cannot be imported ({exc}); install it with "
                "pip install 'deltran-message-bus[fast]', or choose auto or asyncio",
            ) from None
        return EventLoopChoice("asyncio", name, asyncio.new_event_loop)
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return EventLoopChoice("uvloop", name, factory)


def run(main: Coroutine[Any, Any, T], *, event_loop: EventLoopChoice | str | None = None) -> T:
    """Run ``main`` to completion in a new event loop of the chosen kind, as ``asyncio.run``.

    Ctrl-C cancels ``main`` (``KeyboardInterrupt`` is raised once it ends), async
    generators and the default executor are shut down, and the loop is closed.

    Args:
        main: the coroutine to run.
        event_loop: a choice made before, or what to ask :func:`choose_event_loop` for
            (None: ``DELTRAN_EVENT_LOOP``, default ``auto``).

    Raises:
        ValidationError: the loop asked for is unknown or not installed (``main`` is
            closed without running).
    """
    try:
        choice = (
            event_loop if isinstance(event_loop, EventLoopChoice) else choose_event_loop(event_loop)
        )
    except BaseException:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    # asyncio's own loop exactly as asyncio.run makes it (also set as the thread's loop)
    factory = None if choice.name == "asyncio" else choice.factory
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def running_loop_name() -> Literal["asyncio", "uvloop"]:
    """``uvloop`` or ``asyncio``: the implementation of the running event loop."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.split(".")[0] == "uvloop" else "asyncio"
