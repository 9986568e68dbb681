"""In-flight bookkeeping of a pull subscription: which stream sequences it works on or settled.

A subscription keeps one :class:`InFlight` per stream sequence from the moment a
delivery of it is queued until its handler returns (or the delivery is NAKed, or the
consumer re-created: then the entry is ``detached``); a redelivery of that sequence
meanwhile supersedes the delivery (its acknowledgements go to the newest ack subject,
its attempt is the newest delivery count) instead of starting a second handler.
:class:`Settled` remembers the sequences this subscription acknowledged, so a redelivery
of one (its ACK was lost) is acknowledged again instead of being handled again.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from .limits import HandlerLimit

if TYPE_CHECKING:
    from .delivery import JetStreamDelivery

SETTLED_KEPT = 10_000
"""Acknowledged sequences a subscription remembers (the oldest are forgotten first)."""


class InFlight(HandlerLimit):
    """One stream sequence queued for or running in a handler on this subscription, and
    the time limit of that handler (a :class:`HandlerLimit`).

    Attributes:
        reply: the ack subject of its newest delivery.
        attempt: the delivery count of its newest delivery.
        touched: ``time.monotonic()`` of its last ``+WPI`` (or of its arrival).
        started: ``time.monotonic()`` when its handler started (0.0: still queued).
        delivery: the delivery its handler got, once started.
        superseded: redeliveries of it that arrived while it was in flight.
        detached: no longer in the subscription's table (NAKed, or of a consumer since
            re-created): its handler may still run, but its sequence is not its own
            any more (its ACK is not remembered as the sequence's).
    """

    __slots__ = ("attempt", "delivery", "detached", "reply", "started", "superseded", "touched")

    def __init__(self, reply: bytes, attempt: int, now: float) -> None:
        self.deadline = 0.0
        self.done = False
        self.cut = False
        self.task = None
        self.reply = reply
        self.attempt = attempt
        self.touched = now
        self.started = 0.0
        self.detached = False
        self.delivery: JetStreamDelivery | None = None
        self.superseded = 0

    def supersede(self, reply: bytes, attempt: int) -> None:
        """A redelivery of this sequence arrived: acknowledge through it from now on,
        and count its attempt (a failure now is a failure of that delivery)."""
        self.reply = reply
        self.attempt = max(self.attempt, attempt)
        self.superseded += 1
        delivery = self.delivery
        if delivery is not None:
            delivery.reply = reply
            delivery.attempt = max(delivery.attempt, attempt)


class Settled:
    """The last :data:`SETTLED_KEPT` sequences this subscription acknowledged.

    A ring of sequences with a set beside it: adding and forgetting the oldest are
    O(1) (a dict popped from its front would scan its deleted slots).
    """

    __slots__ = ("_order", "_seqs")

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._seqs: set[int] = set()

    def add(self, sequence: int) -> None:
        seqs = self._seqs
        if sequence in seqs:
            return
        order = self._order
        if len(order) >= SETTLED_KEPT:
            seqs.discard(order.popleft())
        order.append(sequence)
        seqs.add(sequence)

    def __contains__(self, sequence: object) -> bool:
        return sequence in self._seqs

    def __len__(self) -> int:
        return len(self._seqs)


__all__ = ["SETTLED_KEPT", "InFlight", "Settled"]
