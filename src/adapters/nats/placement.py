"""When JetStream refuses to place a replicated stream only because a peer has not reported.

The meta leader places a stream's replicas on the peers whose statistics it has
received. A node that just started, restarted or rejoined reports within the server's
statistics interval (a quarter second at first, at most 10 s); until then a stream with
as many replicas as the cluster has nodes is refused with "no suitable peers for
placement, peer offline". That refusal is asked again: a real outage still fails, once
the wait is over, with JetStream's own words.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.js.errors

T = TypeVar("T")

NO_PEERS = 10005
"""JetStream's error code for "no suitable peers for placement, <reasons>"."""
PLACEMENT_WAIT = 15.0
"""Seconds a refused placement is asked again by default: the longest interval between
two reports of a peer (10 s), and a margin for its delivery."""
PLACEMENT_RETRY = 0.25
"""Seconds between two attempts at placing a stream."""
_PREFIX = "no suitable peers for placement"
_PENDING = frozenset({"peer offline"})
"""The reason that says a peer has not reported (or is down); every other reason
(storage, tags, JetStream disabled, "miscellaneous issue", which also stands for a
peer's HA asset limit) is one that waiting cannot be trusted to fix."""


def placement_pending(error: BaseException) -> bool:
    """Whether ``error`` refused a placement only because a peer has not reported yet."""
    if not isinstance(error, nats.js.errors.APIError) or error.err_code != NO_PEERS:
        return False
    text = error.description or ""
    if not text.startswith(_PREFIX):
        return False
    reasons = {reason.strip() for reason in text[len(_PREFIX) :].split(",") if reason.strip()}
    return bool(reasons) and reasons <= _PENDING


async def place(
    call: Callable[[], Awaitable[T]],
    wait: float,
    log: logging.Logger,
    what: str,
    refused: list[nats.js.errors.APIError] | None = None,
) -> T:
    """``await call()``; a refusal for a peer not reported yet is asked again every
    :data:`PLACEMENT_RETRY` seconds for up to ``wait`` seconds. The first refusal is
    logged at INFO naming ``what``, the others at DEBUG; each is appended to
    ``refused``, for a caller whose own deadline may cut the last attempt short.

    Raises:
        nats.js.errors.APIError: JetStream's refusal, at once if waiting cannot fix it,
            else the last one once ``wait`` is over.
    """
    loop = asyncio.get_running_loop()
    until = loop.time() + wait
    level = logging.INFO
    while True:
        try:
            return await call()
        except nats.js.errors.APIError as exc:
            left = until - loop.time()
            if left <= 0 or not placement_pending(exc):
                raise
            if refused is not None:
                refused.append(exc)
            log.log(
                level,
                "%s: %s (code %s); asking again until the peers report",
                what,
                exc.description,
                exc.err_code,
            )
            level = logging.DEBUG
        await asyncio.sleep(min(PLACEMENT_RETRY, left))


__all__ = ["NO_PEERS", "PLACEMENT_RETRY", "PLACEMENT_WAIT", "place", "placement_pending"]
