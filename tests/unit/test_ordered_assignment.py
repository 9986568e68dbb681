"""The assignment of partitions to an ordered group's members: balanced, sticky, shared."""

from __future__ import annotations

from collections import Counter

from hypothesis import given
from hypothesis import strategies as st

from message_bus.adapters.ordered.assignment import assign, quotas

members_st = st.lists(st.text("abcdef0123", min_size=1, max_size=6), min_size=1, max_size=9)
partitions_st = st.integers(min_value=1, max_value=300)


@given(partitions_st, members_st, st.data())
def test_every_member_owns_between_floor_and_ceiling_of_p_over_m(
    partitions: int, members: list[str], data: st.DataObject
) -> None:
    owners = data.draw(
        st.dictionaries(st.integers(0, partitions - 1), st.sampled_from([*members, "gone", ""]))
    )
    target = assign(partitions, members, owners)
    assert sorted(target) == list(range(partitions))
    counts = Counter(target.values())
    live = set(members)
    assert set(counts) <= live
    low, high = partitions // len(live), -(-partitions // len(live))
    assert all(low <= counts.get(m, 0) <= high for m in live), counts


@given(partitions_st, members_st, st.data())
def test_a_live_owner_under_its_quota_keeps_its_partitions(
    partitions: int, members: list[str], data: st.DataObject
) -> None:
    owners = data.draw(st.dictionaries(st.integers(0, partitions - 1), st.sampled_from(members)))
    target = assign(partitions, members, owners)
    quota = quotas(partitions, members)
    held = Counter(owners.values())
    for partition, owner in owners.items():
        if held[owner] <= quota[owner]:
            assert target[partition] == owner


@given(partitions_st, members_st, st.data())
def test_every_member_computes_the_same_target_whatever_the_order_it_lists_members(
    partitions: int, members: list[str], data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(members))
    owners = data.draw(st.dictionaries(st.integers(0, partitions - 1), st.sampled_from(members)))
    assert assign(partitions, members, owners) == assign(partitions, shuffled, owners)


def test_a_member_joining_moves_only_what_its_share_needs() -> None:
    before = assign(32, ["a", "b"], {})
    after = assign(32, ["a", "b", "c"], before)
    moved = [p for p in range(32) if before[p] != after[p]]
    assert len(moved) == Counter(after.values())["c"] == 10


def test_a_member_leaving_moves_only_its_partitions() -> None:
    before = assign(32, ["a", "b", "c"], {})
    after = assign(32, ["a", "b"], before)
    assert all(after[p] == before[p] for p in range(32) if before[p] != "c")


def test_no_members_own_nothing() -> None:
    assert assign(8, [], {0: "a"}) == {}
