"""Whether a running bus can do its work: connected, streams present, subscriptions active."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from message_bus.domain.catalog import MessageType
from message_bus.ports import Subscription

from .containers import Container, resolve

__all__ = ["Readiness", "check_readiness"]

_STREAM_CHECK_TIMEOUT = 2.0


@dataclass(frozen=True)
class Readiness:
    """The answer of ``/readyz``.

    Attributes:
        ready: every check passed.
        checks: each check's name and ``ok`` or why it failed.
    """

    ready: bool
    checks: Mapping[str, str]


async def check_readiness(
    container: Container,
    subscriptions: Mapping[str, Subscription],
    message_types: Iterable[MessageType],
) -> Readiness:
    """Check the connection, the streams of ``message_types`` and every subscription.

    Args:
        container: a started container.
        subscriptions: each handler's subscription, by handler name.
        message_types: the types the handlers consume (their streams must exist).
    """
    checks: dict[str, str] = {"connection": await _connection(container)}
    streams = sorted({t.stream.name for t in message_types if t.stream is not None})
    for name in streams:
        checks[f"stream {name}"] = (
            await _stream(container, name)
            if checks["connection"] == "ok"
            else "unknown: not connected"
        )
    for handler, subscription in subscriptions.items():
        error = subscription.error
        if subscription.active:
            checks[f"subscription {handler}"] = "ok"
        else:
            checks[f"subscription {handler}"] = f"failed: {error}" if error else "stopped"
    return Readiness(ready=all(v == "ok" for v in checks.values()), checks=checks)


async def _connection(container: Container) -> str:
    if container.backend() == "memory":
        if not container.memory_broker.initialized:
            return "not started"
        broker = await resolve(container.memory_broker())
        return "closed" if broker.closed else "ok"
    if not container.nats_client.initialized:
        return "not started"
    client = await resolve(container.nats_client())
    if client.is_connected:
        return "ok"
    return f"not connected ({client.status.value})"


async def _stream(container: Container, name: str) -> str:
    if container.backend() == "memory":
        return "ok"  # the in-memory broker has every stream of its catalog
    manager = await resolve(container.stream_manager())
    try:
        async with asyncio.timeout(_STREAM_CHECK_TIMEOUT):
            await manager.info(name)
    except TimeoutError:
        return f"no answer within {_STREAM_CHECK_TIMEOUT:g}s"
    except KeyError:
        return "missing (run `deltran-bus streams apply`)"
    except Exception as exc:  # noqa: BLE001  # any failure means not ready; say which
        return f"unknown: {type(exc).__name__}: {exc}"
    return "ok"
