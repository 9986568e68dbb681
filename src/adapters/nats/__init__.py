"""The NATS adapter: JetStream publisher and subscriber, streams, dead letters.

Build a :class:`NatsClient` from a :class:`NatsConfig`, ``await client.connect()``,
apply the stream catalog with :class:`StreamManager`, then hand
:class:`JetStreamPublisher` and :class:`JetStreamSubscriber` to services as the
``Publisher`` and ``Subscriber`` ports. nats-py exceptions never leave this package:
they are mapped to the bus's errors.
"""

from .client import ConnectionStatus, NatsClient, StatusListener, reconnect_backoff
from .config import NatsConfig
from .dead_letters import JetStreamDeadLetters
from .publisher import CircuitBreaker, JetStreamPublisher, RetryEvent, RetryHook
from .streams import StreamError, StreamManager, StreamReport, StreamSummary
from .subscriber import JetStreamSubscriber

__all__ = [
    "CircuitBreaker",
    "ConnectionStatus",
    "JetStreamDeadLetters",
    "JetStreamPublisher",
    "JetStreamSubscriber",
    "NatsClient",
    "NatsConfig",
    "RetryEvent",
    "RetryHook",
    "StatusListener",
    "StreamError",
    "StreamManager",
    "StreamReport",
    "StreamSummary",
    "reconnect_backoff",
]
