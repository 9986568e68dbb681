"""Order checks of a consumer group's handler runs: inversions and overlaps per partition key.

A :class:`HandlerRun` is one handler invocation on one delivery: which key, which stream
sequence, which worker, which attempt, and when it started and ended. From a group's
runs, :func:`check_order` counts, per partition key,

* **inversions**: pairs of messages whose first deliveries started in the opposite
  order of their stream sequences (a message handled before one stored earlier);
* **overlaps**: runs that started while another run of the same key was still going,
  on any worker (a key handled twice at once).

An ordered group (``ordering="partition"``) promises zero of both; a shared group
promises neither.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

__all__ = ["HandlerRun", "OrderCheck", "check_order", "count_inversions"]


@dataclass(frozen=True, slots=True, kw_only=True)
class HandlerRun:
    """One handler invocation.

    Attributes:
        key: the message's partition key (its canonical suffix).
        partition: the key's partition number.
        sequence: the message's stream sequence (its place in stream order).
        worker: which member ran the handler.
        attempt: the delivery count (1 on the first delivery).
        started: when the handler started (a monotonic clock, seconds).
        ended: when it returned or raised (same clock).
    """

    key: str
    partition: int
    sequence: int
    worker: int
    attempt: int
    started: float
    ended: float


@dataclass(frozen=True, slots=True, kw_only=True)
class OrderCheck:
    """What :func:`check_order` found.

    Attributes:
        keys: distinct partition keys checked.
        partitions: distinct partitions checked.
        messages: distinct messages checked.
        inversions: pairs of one key's messages first handled out of stream order.
        overlaps: runs started while another run of the same key was going.
        out_of_order_keys: keys with at least one inversion (sorted; at most 10).
        overlapping_keys: keys with at least one overlap (sorted; at most 10).
    """

    keys: int = 0
    partitions: int = 0
    messages: int = 0
    inversions: int = 0
    overlaps: int = 0
    out_of_order_keys: tuple[str, ...] = ()
    overlapping_keys: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """No inversion and no overlap."""
        return self.inversions == 0 and self.overlaps == 0


def count_inversions(values: Sequence[int]) -> int:
    """Pairs ``i < j`` with ``values[i] > values[j]`` (merge sort, O(n log n))."""
    items = list(values)
    inversions = 0
    width = 1
    n = len(items)
    buffer = items[:]
    while width < n:
        for low in range(0, n, 2 * width):
            mid = min(low + width, n)
            high = min(low + 2 * width, n)
            i, j, k = low, mid, low
            while i < mid and j < high:
                if items[i] <= items[j]:
                    buffer[k] = items[i]
                    i += 1
                else:
                    buffer[k] = items[j]
                    inversions += mid - i  # every item left in the left half is larger
                    j += 1
                k += 1
            buffer[k:high] = items[i:mid] if i < mid else items[j:high]
        items, buffer = buffer, items
        width *= 2
    return inversions


def check_order(runs: Iterable[HandlerRun]) -> OrderCheck:
    """Count inversions and overlaps per key among ``runs`` (see the module's doc)."""
    by_key: dict[str, list[HandlerRun]] = defaultdict(list)
    partitions: set[int] = set()
    for run in runs:
        by_key[run.key].append(run)
        partitions.add(run.partition)
    inversions = overlaps = messages = 0
    out_of_order: list[str] = []
    overlapping: list[str] = []
    for key, key_runs in by_key.items():
        key_runs.sort(key=lambda r: (r.started, r.ended))
        first: dict[int, HandlerRun] = {}
        for run in key_runs:
            first.setdefault(run.sequence, run)
        messages += len(first)
        found = count_inversions([r.sequence for r in first.values()])
        if found:
            inversions += found
            out_of_order.append(key)
        latest_end = -float("inf")
        found = 0
        for run in key_runs:
            if run.started < latest_end:
                found += 1
            latest_end = max(latest_end, run.ended)
        if found:
            overlaps += found
            overlapping.append(key)
    return OrderCheck(
        keys=len(by_key),
        partitions=len(partitions),
        messages=messages,
        inversions=inversions,
        overlaps=overlaps,
        out_of_order_keys=tuple(sorted(out_of_order)[:10]),
        overlapping_keys=tuple(sorted(overlapping)[:10]),
    )
