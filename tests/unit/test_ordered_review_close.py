"""Closing an ordered member on a fake clock: drain handles what it buffered, and a member
that is still finishing keeps its partitions until it has."""

from __future__ import annotations

import asyncio

from test_ordered_member import KEY, Rig, T, new, settle

from message_bus import Message


async def test_drain_handles_every_buffered_message_of_its_partitions_then_stops() -> None:
    rig = Rig()
    handled: list[int] = []
    first_running = asyncio.Event()
    release = asyncio.Event()

    async def handle(message: Message) -> None:
        if message.payload["n"] == 0:
            first_running.set()
            await release.wait()
        handled.append(message.payload["n"])

    member = await rig.member(handle)
    for n in range(4):
        rig.source.add(new(n))
    await settle()
    assert first_running.is_set()
    drained = asyncio.create_task(member.drain())
    await settle()
    release.set()
    await asyncio.wait_for(asyncio.shield(drained), timeout=10)
    assert handled == [0, 1, 2, 3], "drain did not handle the messages it had buffered"
    await rig.close()


async def test_a_draining_member_keeps_heartbeating_so_no_one_takes_its_partition_meanwhile() -> (
    None
):
    rig = Rig()
    running: dict[str, int] = {}
    overlaps: list[str] = []
    release = asyncio.Event()

    def handler(name: str):  # type: ignore[no-untyped-def]
        async def handle(message: Message) -> None:
            running[name] = running.get(name, 0) + 1
            if sum(running.values()) > 1:
                overlaps.append(name)
            try:
                if name == "first":
                    await release.wait()
            finally:
                running[name] -= 1

        return handle

    first = await rig.member(handler("first"))
    partition = KEY.partition_number(32)
    rig.source.add(new(0))
    await settle()
    assert running == {"first": 1}
    drained = asyncio.create_task(first.drain())
    await settle()
    other = await rig.member(handler("second"))
    await rig.advance(3 * T)  # the handler is still running: it is still the owner
    assert not overlaps, "another member handled the key while the draining owner still did"
    assert partition not in other.owned
    release.set()
    await asyncio.wait_for(asyncio.shield(drained), timeout=10)
    await rig.advance(T)
    assert partition in other.owned
    await rig.close()
