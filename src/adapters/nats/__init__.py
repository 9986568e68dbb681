"""The NATS adapter: JetStream publisher and subscriber, streams, dead letters.

Build a :class:`NatsClient` from a :class:`NatsConfig`, ``await client.connect()``,
apply the stream catalog with :class:`StreamManager`, then hand
:class:`JetStreamPublisher` and :class:`JetStreamSubscriber` to services as the
``Publisher`` and ``Subscriber`` ports. nats-py exceptions never leave this package:
they are mapped to the bus's errors.

Names are imported on first use, so reading a :class:`NatsConfig` (as the app's
settings do for every backend) loads no NATS client library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .breaker import BreakerState, CircuitBreaker
    from .client import ConnectionStatus, NatsClient, StatusListener, reconnect_backoff
    from .config import NatsConfig
    from .dead_letters import JetStreamDeadLetters
    from .group_store import KvGroupStore
    from .publisher import JetStreamPublisher
    from .sender import RetryEvent, RetryHook
    from .streams import StreamError, StreamManager, StreamReport, StreamSummary
    from .subscriber import JetStreamSubscriber
    from .subscriber.dead_letter_sink import NatsDeadLetterSink
    from .subscriber.stream_source import JetStreamSource

_HOME = {
    "BreakerState": "breaker",
    "CircuitBreaker": "breaker",
    "ConnectionStatus": "client",
    "NatsClient": "client",
    "StatusListener": "client",
    "reconnect_backoff": "client",
    "NatsConfig": "config",
    "JetStreamDeadLetters": "dead_letters",
    "NatsDeadLetterSink": "subscriber.dead_letter_sink",
    "KvGroupStore": "group_store",
    "JetStreamSource": "subscriber.stream_source",
    "JetStreamPublisher": "publisher",
    "RetryEvent": "sender",
    "RetryHook": "sender",
    "StreamError": "streams",
    "StreamManager": "streams",
    "StreamReport": "streams",
    "StreamSummary": "streams",
    "JetStreamSubscriber": "subscriber",
}

__all__ = [
    "BreakerState",
    "CircuitBreaker",
    "ConnectionStatus",
    "JetStreamDeadLetters",
    "JetStreamPublisher",
    "JetStreamSource",
    "JetStreamSubscriber",
    "KvGroupStore",
    "NatsClient",
    "NatsConfig",
    "NatsDeadLetterSink",
    "RetryEvent",
    "RetryHook",
    "StatusListener",
    "StreamError",
    "StreamManager",
    "StreamReport",
    "StreamSummary",
    "reconnect_backoff",
]


def __getattr__(name: str) -> Any:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
