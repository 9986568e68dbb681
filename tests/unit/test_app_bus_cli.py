"""``deltran-bus run``: a bad MODULE:BUS target is one line on stderr and exit 2, before any I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from message_bus.app.cli import run_cli


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_colon", "must be MODULE:BUS"),
        ("module:", "must be MODULE:BUS"),
        ("module:not-an-identifier", "must be MODULE:BUS"),
        ("surely_not_a_module_here:bus", "cannot import surely_not_a_module_here"),
        ("missing/file.py:bus", "no such file: missing/file.py"),
    ],
)
async def test_a_bad_target_is_refused_with_one_line(
    target: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(["run", target]) == 2
    err = capsys.readouterr().err
    assert says in err
    assert err.count("\n") == 1


async def test_a_target_that_is_not_a_bus_names_what_it_found(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "not_a_service.py").write_text('"""Holds no bus."""\n\nbus = 42\n')
    assert await run_cli(["run", f"{tmp_path / 'not_a_service.py'}:bus"]) == 2
    assert "is not a Bus (found int)" in capsys.readouterr().err
