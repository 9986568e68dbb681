"""The demo's progress bar: its rendering, in place on a terminal, line by line elsewhere."""

from __future__ import annotations

import io

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus.app.cli import main
from message_bus.app.cli.progress import BAR_WIDTH, ProgressPrinter, bar, progress_text
from message_bus.app.demo import DemoProgress


def progress(netted: int, *, payments: int = 200, done: bool = False) -> DemoProgress:
    return DemoProgress(
        elapsed=1.25,
        payments=payments,
        published=payments,
        netted=netted,
        proposals=7,
        redelivered=2,
        dead_lettered=1,
        done=done,
    )


@pytest.mark.parametrize(
    ("done", "total", "shown"),
    [
        (0, 10, "[..........]"),
        (5, 10, "[#####.....]"),
        (9, 10, "[#########.]"),
        (10, 10, "[##########]"),
        (12, 10, "[##########]"),
        (-1, 10, "[..........]"),
        (0, 0, "[##########]"),
    ],
)
def test_the_bar_fills_in_proportion(done: int, total: int, shown: str) -> None:
    assert bar(done, total, width=10) == shown


@given(st.integers(-10, 10_000), st.integers(0, 5_000), st.integers(1, 80))
def test_the_bar_always_has_its_width_and_never_overfills(
    done: int, total: int, width: int
) -> None:
    shown = bar(done, total, width)

    assert len(shown) == width + 2
    filled = shown.count("#")
    assert shown == f"[{'#' * filled}{'.' * (width - filled)}]"
    assert (filled == width) == (total <= 0 or done >= total)


def test_a_bar_of_no_width_is_refused() -> None:
    with pytest.raises(ValueError, match="width must be >= 1"):
        bar(1, 2, width=0)


def test_the_line_shows_the_bar_percentage_and_counters() -> None:
    text = progress_text(progress(100))

    assert text == (
        f"[  1.2s] [{'#' * 15}{'.' * 15}]  50%  netted 100/200  published 200/200"
        "  proposals 7  redelivered 2  dead-lettered 1"
    )
    assert len(bar(1, 2)) == BAR_WIDTH + 2


def test_on_a_terminal_the_line_is_redrawn_in_place_and_ended_once() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=True, columns=200)

    for netted in (0, 100, 200):
        printer(progress(netted, done=netted == 200))
    printer.close()

    written = stream.getvalue()
    assert written.count("\r\x1b[K") == 3
    assert written.count("\n") == 1
    assert written.endswith(" 100%  netted 200/200  published 200/200  proposals 7"
                            "  redelivered 2  dead-lettered 1\n")  # fmt: skip
    assert printer.interval < 1.0


def test_on_a_narrow_terminal_the_line_is_cut_so_that_it_never_wraps() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=True, columns=60)

    printer(progress(100, done=True))

    [line] = stream.getvalue().removeprefix("\r\x1b[K").splitlines()
    assert line == progress_text(progress(100))[:59]


def test_a_run_stopped_before_its_last_report_still_ends_the_line() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream, tty=True)

    printer(progress(50))
    printer.close()
    printer.close()

    assert stream.getvalue().endswith("\n")
    assert stream.getvalue().count("\n") == 1


def test_elsewhere_every_report_is_a_line_of_its_own() -> None:
    stream = io.StringIO()
    printer = ProgressPrinter(stream)

    printer(progress(100))
    printer(progress(200, done=True))
    printer.close()

    lines = stream.getvalue().splitlines()
    assert not printer.tty
    assert printer.interval == 1.0
    assert "\r" not in stream.getvalue()
    assert [line.split("  netted ")[1].split()[0] for line in lines] == ["100/200", "200/200"]


def test_the_demo_prints_the_finished_bar(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DELTRAN_BACKEND", "DELTRAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    code = main(["demo", "--backend", "memory", "--payments", "40", "--metrics-port", "0"])

    out = capsys.readouterr().out
    assert code == 0, out
    assert f"[{'#' * BAR_WIDTH}] 100%  netted 40/40  published 40/40" in out
