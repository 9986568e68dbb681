"""The broker as its consumers see it: clock, codec, activity counters, dead-letter store, forget.

Groups, members and core routes receive one :class:`ConsumerHost` from the broker that
owns them and use nothing else of it, so the consumer modules never import the broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from message_bus.domain.codec import Encoded, WireCodec
from message_bus.ports.subscriber import Subscription

from .clock import Clock


class Activity:
    """Progress counters that the broker's ``settle`` reads.

    Attributes:
        events: broker events so far (publish, delivery, ack, nak, term, timer); only
            its changes matter.
        woken: workers woken and not yet running.
    """

    __slots__ = ("events", "woken")

    def __init__(self) -> None:
        self.events = 0
        self.woken = 0


class DeadLetterStore(Protocol):
    """Stores a dead letter of ``original`` in the dead-letter stream."""

    def __call__(
        self,
        original: Encoded,
        *,
        reason: str,
        stream: str,
        sequence: int,
        deliveries: int,
        consumer_group: str,
        consumer: str,
    ) -> None: ...


@dataclass(frozen=True, slots=True, eq=False)
class ConsumerHost:
    """What consumers may use of their broker.

    Attributes:
        clock: the broker's time source.
        codec: decodes deliveries and encodes replies.
        activity: the counters to bump on every event.
        store_dead_letter: stores a dead letter.
        forget: called with a subscription once its last worker has ended.
        joining: tasks waiting in a ``stop`` or ``drain`` of any subscription of the
            broker (their own workers are not waited for, so no two wait for each other).
    """

    clock: Clock
    codec: WireCodec
    activity: Activity
    store_dead_letter: DeadLetterStore
    forget: Callable[[Subscription], None]
    joining: set[asyncio.Task[object]] = field(default_factory=set)
