"""The demo's order checks: per-key inversions and overlaps, and what an ordered run requires."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus.app.cli.demo import demo_command
from message_bus.app.cli.parser import build_parser
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.app.demo import DemoOptions, DemoReport, format_report, run_demo
from message_bus.app.order_check import HandlerRun, OrderCheck, check_order, count_inversions
from message_bus.domain.errors import ValidationError


def run(
    sequence: int,
    started: float,
    ended: float | None = None,
    *,
    key: str = "corridor.USD-EUR.bank.BANKGB2L",
    worker: int = 0,
    attempt: int = 1,
) -> HandlerRun:
    return HandlerRun(
        key=key,
        partition=7,
        sequence=sequence,
        worker=worker,
        attempt=attempt,
        started=started,
        ended=started + 0.5 if ended is None else ended,
    )


def test_runs_of_one_key_in_stream_order_one_at_a_time_pass() -> None:
    check = check_order([run(1, 0.0), run(2, 1.0), run(3, 2.0)])

    assert check == OrderCheck(keys=1, partitions=1, messages=3)
    assert check.ok


def test_a_message_handled_before_one_stored_earlier_is_an_inversion() -> None:
    check = check_order([run(2, 0.0), run(1, 1.0), run(3, 2.0)])

    assert check.inversions == 1
    assert check.out_of_order_keys == ("corridor.USD-EUR.bank.BANKGB2L",)
    assert not check.ok


def test_a_retry_after_later_messages_counts_only_its_first_delivery() -> None:
    # 1 fails, is retried after 2 and 3 (a shared group's NAK): first deliveries 1, 2, 3
    retried = [run(1, 0.0), run(2, 1.0), run(3, 2.0), run(1, 3.0, attempt=2)]
    # 2's first delivery only comes after 3's: an inversion
    late = [run(1, 0.0), run(3, 1.0), run(2, 2.0)]

    assert check_order(retried).inversions == 0
    assert check_order(late).inversions == 1


def test_two_runs_of_one_key_at_once_on_two_workers_overlap() -> None:
    check = check_order([run(1, 0.0, 2.0, worker=0), run(2, 1.0, 3.0, worker=1), run(3, 4.0)])

    assert check.overlaps == 1
    assert check.inversions == 0
    assert check.overlapping_keys == ("corridor.USD-EUR.bank.BANKGB2L",)
    assert not check.ok


def test_runs_of_different_keys_may_overlap_and_interleave() -> None:
    other = "corridor.GBP-USD.bank.BANKUS33"
    check = check_order(
        [run(1, 0.0, 2.0), run(3, 0.5, 2.5, key=other), run(2, 1.0, 1.5, key=other)]
    )

    assert check.keys == 2
    assert check.overlaps == 1  # 2 started while 3 of its own key ran
    assert check.inversions == 1  # 3 before 2, both keyed by `other`


def test_a_run_that_starts_as_the_previous_ends_does_not_overlap() -> None:
    assert check_order([run(1, 0.0, 1.0), run(2, 1.0, 2.0)]).overlaps == 0


@given(st.lists(st.integers(min_value=-50, max_value=50), max_size=60))
def test_inversions_are_the_pairs_out_of_order(values: list[int]) -> None:
    pairs = sum(
        1 for i in range(len(values)) for j in range(i + 1, len(values)) if values[i] > values[j]
    )

    assert count_inversions(values) == pairs


def test_an_ordered_report_is_not_ok_with_an_inversion_or_an_overlap() -> None:
    def report(check: OrderCheck, *, ordered: bool) -> DemoReport:
        return DemoReport(payments=2, netted=2, completed=True, ordered=ordered, order=check)

    inverted = check_order([run(2, 0.0), run(1, 1.0)])
    overlapping = check_order([run(1, 0.0, 2.0), run(2, 1.0, 3.0, worker=1)])

    assert report(check_order([run(1, 0.0), run(2, 1.0)]), ordered=True).ok
    assert not report(inverted, ordered=True).ok
    assert not report(overlapping, ordered=True).ok
    assert report(inverted, ordered=False).ok  # a shared group promises no order
    text = format_report(report(inverted, ordered=True))
    assert "1 partitions checked (1 keys, 2 instructions), 1 inversions, 0 overlaps" in text
    assert "out of order     corridor.USD-EUR.bank.BANKGB2L" in text


def test_an_unknown_ordering_is_refused_naming_the_option() -> None:
    with pytest.raises(ValidationError) as caught:
        DemoOptions(ordering="random")  # type: ignore[arg-type]

    assert caught.value.field == "--ordering"


@pytest.fixture
async def bus() -> AsyncIterator[Container]:
    container = build_container(load_settings(environ={}))
    container.backend.override("memory")
    await start_container(container)
    yield container
    await shutdown_container(container)


async def test_the_demo_nets_in_an_ordered_group_by_default_with_every_key_in_order(
    bus: Container,
) -> None:
    options = DemoOptions(payments=200, failures=5, poison=2, seed=3, cycle_window=0.01)

    report = await asyncio.wait_for(run_demo(bus, options), timeout=120)

    assert report.ok, format_report(report)
    assert report.ordered
    assert report.order.messages == 202  # every instruction, the poison ones too
    assert report.order.keys == 48  # 6 corridors x 8 debtor banks
    assert report.order.partitions == len(report.per_partition)
    assert report.order.inversions == 0
    assert report.order.overlaps == 0
    assert report.redeliveries >= 5
    assert "netting group    ordered group, 32 partitions" in format_report(report)


async def test_the_ordered_group_takes_its_partition_count_from_the_settings() -> None:
    container = build_container(load_settings(environ={"DELTRAN_PARTITIONS": "8"}))
    container.backend.override("memory")
    await start_container(container)
    try:
        options = DemoOptions(payments=60, failures=2, poison=0, seed=5, cycle_window=0.01)
        report = await asyncio.wait_for(run_demo(container, options), timeout=120)
    finally:
        await shutdown_container(container)

    assert report.ok, format_report(report)
    assert report.partitions == 8
    assert set(report.per_partition) <= set(range(8))
    assert report.order.partitions <= 8


async def test_a_shared_netting_group_reports_overlaps_without_failing(bus: Container) -> None:
    options = DemoOptions(payments=200, failures=0, poison=0, seed=3, ordering="none")

    report = await asyncio.wait_for(run_demo(bus, options), timeout=120)

    assert not report.ordered
    assert report.ok
    assert report.order.overlaps > 0  # a shared group handles a key's payments at once
    assert "shared group (order not required)" in format_report(report)


def test_the_demo_command_runs_ordered_on_memory_and_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in ("DELTRAN_NATS_URLS", "DELTRAN_BACKEND", "DELTRAN_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    args = build_parser().parse_args(
        [
            "demo",
            "--backend",
            "memory",
            "--payments",
            "60",
            "--cycle-window",
            "0.01",
            "--metrics-port",
            "0",
            "--seed",
            "2",
        ]
    )

    code = asyncio.run(demo_command(args, None))

    out = capsys.readouterr().out
    assert code == 0, out
    assert "ordered by partition, 32 partitions" in out
    assert "0 inversions, 0 overlaps" in out
    assert "every partition handled in stream order, no key handled twice at once" in out
