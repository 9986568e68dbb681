"""A lane stopped while its handler ignores the cancellation, on a fake clock: the lane's
worker handles nothing more, so the partition's new owner is the only one handling it."""

from __future__ import annotations

import asyncio
import contextlib

from test_ordered_member import KEY, Rig, T, new, settle

from message_bus import Message
from message_bus.adapters.ordered.store import PartitionRecord


async def test_a_lane_taken_over_handles_nothing_more_although_its_handler_ignored_the_cancel() -> (
    None
):
    rig = Rig()
    started: list[int] = []
    forever = asyncio.Event()

    async def handle(message: Message) -> None:
        n = message.payload["n"]
        started.append(n)
        if n == 2:
            with contextlib.suppress(asyncio.CancelledError):  # a handler that swallows it
                await forever.wait()

    member = await rig.member(handle)
    partition = KEY.partition_number(32)
    assert partition is not None
    rig.source.add(new(0))
    await settle()
    assert started == [0]
    snapshot = await rig.store.snapshot()
    current = snapshot.partitions[partition]
    await rig.store.write_partition(  # another member takes the partition over
        partition,
        PartitionRecord(owner="someone-else", floor=current.value.floor),
        current.revision,
    )
    for n in range(1, 5):
        rig.source.add(new(n))
    await settle()
    assert partition not in member.owned  # the commit of #2 found the record changed
    assert started == [0, 1, 2], f"the stopped lane went on handling: {started}"
    await rig.close()


async def test_a_member_takes_a_partition_back_only_once_its_stopped_handler_has_ended() -> None:
    rig = Rig()
    running: list[int] = []
    overlaps: list[int] = []
    cleanup = asyncio.Event()
    runs = 0

    async def handle(message: Message) -> None:
        nonlocal runs
        runs += 1
        if running:
            overlaps.append(message.payload["n"])
        running.append(message.payload["n"])
        try:
            if runs == 1:
                try:
                    await asyncio.Event().wait()
                except asyncio.CancelledError:
                    await cleanup.wait()  # cleaning up after the cancellation takes a while
                    raise
        finally:
            running.remove(message.payload["n"])

    member = await rig.member(handle)
    partition = KEY.partition_number(32)
    try:
        rig.source.add(new(0))
        await settle()
        assert running == [0]
        rig.store.down = True
        await rig.advance(T)  # fenced: the handler is cancelled, and cleans up
        rig.store.down = False
        await rig.advance(T)  # heartbeats again: the partition is the member's again
        assert not overlaps, "the message ran again while its first run was still going"
        cleanup.set()
        await rig.advance(T)
        assert partition in member.owned
        assert runs == 2
        assert not running
    finally:
        cleanup.set()
        await rig.close()
