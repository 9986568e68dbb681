"""Which member should own which partition: sticky, balanced, the same for every member."""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def quotas(partitions: int, members: Iterable[str]) -> dict[str, int]:
    """How many partitions each member owns: ⌊P/M⌋, and one more for the first
    ``P mod M`` members in sorted order."""
    live = sorted(set(members))
    if not live:
        return {}
    base, extra = divmod(partitions, len(live))
    return {member: base + (1 if rank < extra else 0) for rank, member in enumerate(live)}


def assign(partitions: int, members: Iterable[str], owners: Mapping[int, str]) -> dict[int, str]:
    """The target owner of every partition ``0..partitions-1``.

    Every member computes it from the same facts (the live members, the current owners)
    and gets the same answer. A partition stays with its current owner while that owner
    is live and under its quota (see :func:`quotas`), so a rebalance moves only what it
    must; the others go, in partition order, to the live members with room, in sorted
    order. Each member ends with exactly its quota. No members: no owners.
    """
    quota = quotas(partitions, members)
    if not quota:
        return {}
    kept = dict.fromkeys(quota, 0)
    target: dict[int, str] = {}
    for partition in range(partitions):
        owner = owners.get(partition, "")
        if owner in quota and kept[owner] < quota[owner]:
            target[partition] = owner
            kept[owner] += 1
    open_members = iter([m for m in sorted(quota) for _ in range(quota[m] - kept[m])])
    for partition in range(partitions):
        if partition not in target:
            target[partition] = next(open_members)
    return target


__all__ = ["assign", "quotas"]
