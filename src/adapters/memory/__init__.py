"""The in-memory adapter: JetStream's semantics in one process, for tests, demos and benchmarks.

``InMemoryBroker`` holds the streams, durable consumer groups, core queue groups and the
dead-letter stream; ``broker.publisher()``, ``broker.subscriber()`` and
``broker.dead_letters()`` give the ports. Time comes from a :class:`Clock`: the
:class:`SystemClock` by default, or a :class:`ManualClock` that tests advance.
"""

from .broker import (
    ConsumerState,
    InMemoryBroker,
    InMemoryDeadLetters,
    InMemoryPublisher,
    InMemorySubscriber,
    StreamState,
)
from .clock import Clock, ManualClock, SystemClock, Timer

__all__ = [
    "Clock",
    "ConsumerState",
    "InMemoryBroker",
    "InMemoryDeadLetters",
    "InMemoryPublisher",
    "InMemorySubscriber",
    "ManualClock",
    "StreamState",
    "SystemClock",
    "Timer",
]
