"""Contract scenarios of a new group's start position: first, new, or from a time.

Every adapter gives the same answers, for shared and ordered groups: a group created
with ``start="new"`` skips what the stream retains; one created at a time starts with
the first message stored at or after it; ``"first"`` is the default; a restarted group
resumes where it stopped (its start position is not applied again); and a member
with another start position than its group's is refused with
:class:`~message_bus.domain.errors.StartPositionConflict`.

Times: a scenario lets a second of broker time pass before and after its start time,
which it reads from the harness's ``utcnow()`` if it has one (a fake clock), else from
the system clock (a real broker's).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import StartPositionConflict
from message_bus.domain.message import Message
from message_bus.ports.config import SubscriberConfig

from .harness import BusHarness, broker_utcnow
from .ordering import ordered_config
from .scenarios import Context, Inbox, recording, scenario

KINDS = ("shared", "ordered")
"""The group kinds every scenario runs on: a shared group and an ordered one."""


def _config(ctx: Context, kind: str, group: str, **overrides: Any) -> SubscriberConfig:
    if kind == "ordered":
        return ordered_config(ctx, group, **overrides)
    return ctx.config(group, **overrides)


async def _start_time(h: BusHarness) -> datetime:
    """A time after every message published so far and before every later one."""
    await h.advance(1.0)
    when = broker_utcnow(h)
    await h.advance(1.0)
    return when


async def _publish(h: BusHarness, messages: list[Message]) -> None:
    await h.publisher().publish_many(messages)


async def _receive(ctx: Context, inbox: Inbox, expected: list[Message]) -> None:
    """Exactly ``expected`` arrive, in stream order, each once (after a linger that lets
    anything else show)."""
    await ctx.received_exactly_once(inbox, expected, linger=ctx.beyond(ctx.ack_wait))
    got = inbox.ids
    assert got == [m.id for m in expected], f"received {got}, wanted {[m.id for m in expected]}"


def _each_kind(name: str, run: Callable[[BusHarness, str], Awaitable[None]]) -> None:
    """Registers ``run`` as scenario ``name``, on a shared group, then an ordered one."""

    async def both(h: BusHarness) -> None:
        for kind in KINDS:
            try:
                await run(h, kind)
            except AssertionError as exc:
                raise AssertionError(f"{kind} group: {exc}") from exc

    both.__name__ = both.__qualname__ = name
    both.__doc__ = run.__doc__
    scenario()(both)


async def _new_only_skips_retained(h: BusHarness, kind: str) -> None:
    """A group created with start="new" skips every retained message."""
    ctx = Context(h)
    old = [ctx.message() for _ in range(3)]
    await _publish(h, old)
    inbox = ctx.inbox()
    config = _config(ctx, kind, "fresh", start="new", max_concurrent=1)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    new = [ctx.message() for _ in range(3)]
    await _publish(h, new)
    await _receive(ctx, inbox, new)


async def _at_time_starts_with_first_message_at_or_after(h: BusHarness, kind: str) -> None:
    """A group created at a time starts with the first message stored at or after it."""
    ctx = Context(h)
    await _publish(h, [ctx.message() for _ in range(3)])
    when = await _start_time(h)
    since = [ctx.message() for _ in range(2)]
    await _publish(h, since)
    inbox = ctx.inbox()
    config = _config(ctx, kind, "since", start=when, max_concurrent=1)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    later = [ctx.message() for _ in range(2)]
    await _publish(h, later)
    await _receive(ctx, inbox, since + later)


async def _future_time_starts_like_new(h: BusHarness, kind: str) -> None:
    """A group created with a start time still to come starts like "new": its position
    is fixed when it is created."""
    ctx = Context(h)
    await _publish(h, [ctx.message() for _ in range(2)])
    when = broker_utcnow(h) + timedelta(days=1)
    inbox = ctx.inbox()
    config = _config(ctx, kind, "future", start=when, max_concurrent=1)
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    new = [ctx.message() for _ in range(2)]
    await _publish(h, new)
    await _receive(ctx, inbox, new)


async def _first_is_the_default(h: BusHarness, kind: str) -> None:
    """A group created with no start position starts at the first retained message."""
    ctx = Context(h)
    old = [ctx.message() for _ in range(3)]
    await _publish(h, old)
    inbox = ctx.inbox()
    config = _config(ctx, kind, "all", max_concurrent=1)
    assert config.start == "first"
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    new = [ctx.message() for _ in range(2)]
    await _publish(h, new)
    await _receive(ctx, inbox, old + new)


async def _restart_keeps_position(h: BusHarness, kind: str) -> None:
    """A restarted group resumes where it stopped: neither the messages before it was
    created, nor those it handled, nor those stored while it was down are lost or
    repeated (its start position is not applied again)."""
    ctx = Context(h)
    await _publish(h, [ctx.message() for _ in range(2)])
    config = _config(ctx, kind, "restart", start="new", max_concurrent=1)
    inbox = ctx.inbox()
    subscriber = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    await subscriber.subscribe(recording(inbox))
    handled = [ctx.message() for _ in range(2)]
    await _publish(h, handled)
    await _receive(ctx, inbox, handled)
    await subscriber.close()
    while_down = [ctx.message() for _ in range(2)]
    await _publish(h, while_down)
    again = ctx.inbox()
    restarted = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    await restarted.subscribe(recording(again))
    after = [ctx.message()]
    await _publish(h, after)
    await _receive(ctx, again, while_down + after)
    await restarted.close()


async def _other_start_is_refused(h: BusHarness, kind: str) -> None:
    """A member whose start position differs from its group's is refused; one with the
    same joins."""
    ctx = Context(h)
    await _publish(h, [ctx.message()])
    config = _config(ctx, kind, "strict", start="new", max_concurrent=1)
    inbox = ctx.inbox()
    await h.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(recording(inbox))
    others = [
        _config(ctx, kind, "strict", start="first", max_concurrent=1),
        _config(ctx, kind, "strict", start=datetime(2026, 1, 1, tzinfo=UTC), max_concurrent=1),
    ]
    for other in others:
        refusal: StartPositionConflict | None = None
        try:
            await h.subscriber(MessageType.PAYMENT_INSTRUCTION, other).subscribe(
                recording(ctx.inbox())
            )
        except StartPositionConflict as exc:
            refusal = exc
        assert refusal is not None, f"a member with start {other.start_token} joined"
        assert (refusal.field, refusal.value, refusal.expected) == (
            "start",
            other.start_token,
            "new",
        ), refusal
    twin = h.subscriber(MessageType.PAYMENT_INSTRUCTION, config)
    await twin.subscribe(recording(inbox))
    sent = [ctx.message()]
    await _publish(h, sent)
    await _receive(ctx, inbox, sent)
    await twin.close()


_each_kind("new_group_starting_from_new_messages_skips_the_retained_ones", _new_only_skips_retained)
_each_kind(
    "new_group_starting_at_a_time_begins_with_the_first_message_stored_then",
    _at_time_starts_with_first_message_at_or_after,
)
_each_kind("new_group_starting_at_a_future_time_starts_like_new", _future_time_starts_like_new)
_each_kind("new_group_starts_from_the_first_retained_message_by_default", _first_is_the_default)
_each_kind(
    "restarted_group_keeps_its_start_position_and_resumes_where_it_stopped",
    _restart_keeps_position,
)
_each_kind("member_with_another_start_position_is_refused", _other_start_is_refused)

__all__ = ["KINDS"]
