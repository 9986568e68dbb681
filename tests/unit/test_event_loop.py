"""Services and commands start on uvloop when it is installed, on asyncio otherwise."""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus.app import cli
from message_bus.app.bus import Bus
from message_bus.app.config import BusSettings, load_settings
from message_bus.app.loop import (
    EVENT_LOOP_ENV,
    EVENT_LOOPS,
    choose_event_loop,
    run,
    running_loop_name,
)
from message_bus.domain.errors import ValidationError

needs_uvloop = pytest.mark.skipif(
    importlib.util.find_spec("uvloop") is None,
    reason="uvloop is not installed (a dev dependency: CI runs the uvloop path)",
)


def block_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import uvloop`` raises ImportError, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "uvloop", None)


async def loop_name() -> str:
    return running_loop_name()


@needs_uvloop
def test_auto_picks_uvloop_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    choice = choose_event_loop()
    assert (choice.name, choice.requested) == ("uvloop", "auto")
    assert run(loop_name()) == "uvloop"


def test_auto_falls_back_to_asyncio_when_uvloop_cannot_be_imported(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    block_uvloop(monkeypatch)
    assert choose_event_loop().name == "asyncio"
    assert run(loop_name()) == "asyncio"


@needs_uvloop
def test_asyncio_asked_for_runs_asyncio_even_with_uvloop_installed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert run(loop_name()) == "asyncio"
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    assert run(loop_name()) == "uvloop"
    assert run(loop_name(), event_loop="asyncio") == "asyncio"  # the argument wins


def test_uvloop_asked_for_without_uvloop_fails_naming_the_variable_and_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    block_uvloop(monkeypatch)
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    with pytest.raises(ValidationError) as caught:
        choose_event_loop()
    assert caught.value.field == EVENT_LOOP_ENV
    assert caught.value.value == "uvloop"
    assert "deltran-message-bus[fast]" in str(caught.value)

    main = loop_name()
    with pytest.raises(ValidationError, match=r"event_loop 'uvloop'"):
        run(main, event_loop="uvloop")
    assert main.cr_frame is None  # closed, not left unawaited


@given(st.text(max_size=12).filter(lambda t: t.strip().lower() not in EVENT_LOOPS))
def test_any_other_value_is_refused_naming_the_variable_and_the_value(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        choose_event_loop(environ={EVENT_LOOP_ENV: text})
    assert (caught.value.field, caught.value.value) == (EVENT_LOOP_ENV, text)
    assert "auto, asyncio, uvloop" in caught.value.reason


@pytest.mark.parametrize("text", [pytest.param("UVLOOP", marks=needs_uvloop), " asyncio ", "Auto"])
def test_values_are_read_without_regard_to_case_or_surrounding_blanks(text: str) -> None:
    assert choose_event_loop(environ={EVENT_LOOP_ENV: text}).requested == text.strip().lower()


class StopAtOnce(Bus):
    """A Bus whose serve returns the loop it ran on, without connecting anything."""

    async def serve(self, **_: Any) -> int:
        return {"uvloop": 10, "asyncio": 20}[running_loop_name()]


@pytest.mark.parametrize(
    ("asked", "code"), [pytest.param("uvloop", 10, marks=needs_uvloop), ("asyncio", 20)]
)
def test_bus_run_serves_on_the_loop_asked_for(
    monkeypatch: pytest.MonkeyPatch, asked: str, code: int
) -> None:
    monkeypatch.setenv(EVENT_LOOP_ENV, asked)
    assert StopAtOnce().run() == code
    monkeypatch.delenv(EVENT_LOOP_ENV)
    assert StopAtOnce().run(event_loop=asked) == code


def test_bus_run_falls_back_to_asyncio_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    block_uvloop(monkeypatch)
    assert StopAtOnce().run() == 20


@needs_uvloop
def test_every_cli_command_runs_in_the_chosen_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []

    async def recorded(argv: Any, **_: Any) -> int:
        seen.append(running_loop_name())
        return 0

    monkeypatch.setattr(cli, "run_cli", recorded)
    monkeypatch.delenv(EVENT_LOOP_ENV, raising=False)
    assert cli.main(["docs", "asyncapi"]) == 0
    monkeypatch.setenv(EVENT_LOOP_ENV, "asyncio")
    assert cli.main(["docs", "asyncapi"]) == 0
    block_uvloop(monkeypatch)
    monkeypatch.delenv(EVENT_LOOP_ENV)
    assert cli.main(["docs", "asyncapi"]) == 0
    assert seen == ["uvloop", "asyncio", "asyncio"]


def test_cli_refuses_a_missing_uvloop_in_one_line_with_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    block_uvloop(monkeypatch)
    monkeypatch.setenv(EVENT_LOOP_ENV, "uvloop")
    assert cli.main(["docs", "asyncapi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "DELTRAN_EVENT_LOOP 'uvloop'" in err
    assert "[fast]" in err


def test_the_variable_is_not_reported_as_an_unknown_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="message_bus.app.config"):
        load_settings(environ={EVENT_LOOP_ENV: "asyncio", "DELTRAN_TYPO": "1"})
    assert "DELTRAN_TYPO" in caplog.text  # the check still runs
    assert EVENT_LOOP_ENV not in caplog.text


def test_the_test_suite_itself_stays_on_asyncio() -> None:
    async def name() -> str:
        return running_loop_name()

    assert asyncio.run(name()) == "asyncio"


@pytest.mark.parametrize("asked", [pytest.param("uvloop", marks=needs_uvloop), "asyncio"])
def test_a_memory_bus_serves_a_whole_run_on_the_loop_asked_for_and_logs_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, asked: str
) -> None:
    bus = Bus(BusSettings(backend="memory"))
    bus.container.config.metrics.port.from_value(0)
    stop_now = bus.serve

    async def serve_until_ready(**_: Any) -> int:
        stop = asyncio.Event()
        return await stop_now(stop=stop, on_ready=lambda url: stop.set())

    monkeypatch.setattr(bus, "serve", serve_until_ready)
    with caplog.at_level(logging.INFO, logger="message_bus.app.runner"):
        assert bus.run(event_loop=asked) == 0
    assert f"(event loop: {asked})" in caplog.text
