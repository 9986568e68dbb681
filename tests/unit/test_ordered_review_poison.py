"""A message whose handler takes its member down with it, on a fake clock: every owner's
delivery counts, so after ``max_deliver`` of them it is dead-lettered, not retried forever."""

from __future__ import annotations

import asyncio

from test_ordered_member import Rig, T, new, settle

from message_bus import Message


async def test_deliveries_that_died_with_their_member_count_toward_max_deliver() -> None:
    rig = Rig()
    runs = 0

    async def poison(message: Message) -> None:
        nonlocal runs
        runs += 1
        await asyncio.Event().wait()  # the member dies while this runs

    rig.source.add(new(0))
    for _ in range(4):
        member = await rig.member(poison, max_deliver=2)
        await rig.advance(2 * T)
        await member.halt()
        await settle()
    assert runs <= 3, f"a message that kills its member ran {runs} times with max_deliver=2"
    assert [seq for seq, _, _ in rig.sink.letters] == [1]
    await rig.close()
