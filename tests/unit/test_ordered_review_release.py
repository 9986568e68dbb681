"""Handing a partition over on a fake clock: a release whose write failed, or landed
while its caller saw a timeout, does not leave the partition with no one handling it."""

from __future__ import annotations

from test_ordered_member import FlakyStore, Rig, T

from message_bus.adapters.ordered.store import PartitionRecord, StoreUnavailable


class FailingReleases(FlakyStore):
    """A store whose next ``failures`` releases (writes with no owner) fail; with
    ``landed`` the write is stored all the same, as a timeout whose write got through."""

    def __init__(self, rig: Rig, failures: int, *, landed: bool) -> None:
        super().__init__(rig.store.inner)
        self.failures = failures
        self.landed = landed

    async def write_partition(self, partition: int, record: PartitionRecord, revision: int) -> int:
        if record.owner == "" and self.failures:
            self.failures -= 1
            if self.landed:
                await self.inner.write_partition(partition, record, revision)
            raise StoreUnavailable("timed out")
        return await self.inner.write_partition(partition, record, revision)


async def _a_joining_member_gets_its_share_although_releases_failed(landed: bool) -> None:
    rig = Rig()
    first = await rig.member(lambda m: None, store=FailingReleases(rig, 3, landed=landed))
    await rig.advance(T)
    assert len(first.owned) == 32
    second = await rig.member(lambda m: None)
    await rig.advance(3 * T)
    assert len(first.owned) == len(second.owned) == 16, (
        f"first owns {len(first.owned)}, second {len(second.owned)}: a partition whose "
        "release failed is owned by no lane and moves to no one"
    )
    await rig.close()


async def test_a_release_the_store_did_not_take_is_written_again() -> None:
    await _a_joining_member_gets_its_share_although_releases_failed(landed=False)


async def test_a_release_that_landed_although_it_timed_out_still_hands_the_partition_over() -> None:
    await _a_joining_member_gets_its_share_although_releases_failed(landed=True)
