"""Read-only JetStream API calls shared by the operators' views, with the bus's own errors."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import ConsumerInfo

from message_bus.domain.errors import BusConnectionError

from .client import NatsClient
from .streams import StreamError

T = TypeVar("T")

LIST_PAGE = 256
"""Consumers the server lists per page."""


async def call_jetstream(name: str, call: Callable[[], Awaitable[T]]) -> T:
    """``await call()``, with JetStream's refusals as :class:`StreamError` (naming
    ``name``) and a silent or lost server as :class:`BusConnectionError`."""
    try:
        return await call()
    except nats.js.errors.APIError as exc:
        raise StreamError(name, f"{exc.description} (code {exc.err_code})") from exc
    except (nats.errors.Error, OSError) as exc:
        raise BusConnectionError(f"JetStream did not answer (stream {name}): {exc!r}") from exc


async def list_consumers(client: NatsClient, stream: str) -> list[ConsumerInfo]:
    """Every consumer of ``stream``, page by page.

    Raises:
        StreamError, BusConnectionError: see :func:`call_jetstream`.
    """
    js = client.jetstream
    infos: list[ConsumerInfo] = []
    while True:
        page: list[ConsumerInfo] = await call_jetstream(
            stream, functools.partial(js.consumers_info, stream, len(infos))
        )
        infos.extend(page)
        if len(page) < LIST_PAGE:
            return infos


__all__ = ["LIST_PAGE", "call_jetstream", "list_consumers"]
