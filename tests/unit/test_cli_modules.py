"""The ``deltran-bus`` command is the CLI package's ``main``, however it is started."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import entry_points

import message_bus.app.cli


def test_python_dash_m_runs_the_console_script() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "message_bus.app.cli", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: deltran-bus")


def test_the_console_script_is_the_packages_main() -> None:
    (script,) = entry_points(group="console_scripts", name="deltran-bus")

    assert script.load() is message_bus.app.cli.main
