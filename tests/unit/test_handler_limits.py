"""``HandlerLimits``: every handler of a subscription cut off at ``max_handler_time`` on one
timer, none scheduled per handler."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from message_bus.adapters.nats.subscriber.limits import HandlerLimit, HandlerLimits


def started(limits: HandlerLimits) -> tuple[HandlerLimit, asyncio.Timeout]:
    limit = HandlerLimit()
    return limit, limits.start(limit)


async def run_under(started: tuple[HandlerLimit, asyncio.Timeout], seconds: float) -> str:
    limit, timeout = started
    try:
        async with timeout:
            await asyncio.sleep(seconds)
    except TimeoutError:
        return "cut"
    finally:
        limit.done = True
    return "returned"


async def test_a_handler_past_its_deadline_is_cut_off_and_one_within_it_returns() -> None:
    limits = HandlerLimits(0.2, capacity=4)
    slow = asyncio.create_task(run_under(started(limits), 30.0))
    quick = asyncio.create_task(run_under(started(limits), 0.01))
    loop = asyncio.get_running_loop()
    began = loop.time()
    assert await asyncio.wait_for(quick, 10.0) == "returned"
    assert await asyncio.wait_for(slow, 10.0) == "cut"
    assert 0.15 <= loop.time() - began < 5.0
    limits.close()


async def test_handlers_starting_one_after_another_are_each_cut_at_their_own_deadline() -> None:
    limits = HandlerLimits(0.3, capacity=4)
    loop = asyncio.get_running_loop()
    ended: list[float] = []

    async def hang(limit: tuple[HandlerLimit, asyncio.Timeout]) -> None:
        began = loop.time()
        assert await run_under(limit, 30.0) == "cut"
        ended.append(loop.time() - began)

    first = asyncio.create_task(hang(started(limits)))
    await asyncio.sleep(0.15)
    second = asyncio.create_task(hang(started(limits)))
    await asyncio.wait_for(asyncio.gather(first, second), 10.0)
    assert all(0.25 <= took < 5.0 for took in ended), ended
    limits.close()


async def test_many_handlers_schedule_one_timer_not_one_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loop = asyncio.get_running_loop()
    scheduled: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        scheduled.append(when)
        return call_at(when, callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_at", counting)
    limits = HandlerLimits(60.0, capacity=8)
    results = await asyncio.gather(*(run_under(started(limits), 0) for _ in range(1000)))
    assert results == ["returned"] * 1000
    assert len(scheduled) == 1
    limits.close()


async def test_a_handler_that_returned_is_never_cut_off_later() -> None:
    limits = HandlerLimits(0.05, capacity=2)
    limit = started(limits)
    assert await run_under(limit, 0) == "returned"
    await asyncio.sleep(0.2)  # past its deadline: the timer fires and finds it done
    assert not limit[1].expired()
    limits.close()
