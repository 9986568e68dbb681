"""The ``deltran-bus`` package keeps its shape: one job a module, no private names shared."""

from __future__ import annotations

import ast
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

import message_bus.app.cli

PACKAGE = Path(message_bus.app.cli.__file__).parent
MODULES = sorted(PACKAGE.glob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_each_module_names_its_job_in_its_first_docstring_line(path: Path) -> None:
    docstring = ast.get_docstring(ast.parse(path.read_text()))

    assert docstring, f"{path.name} has no docstring"
    assert docstring.splitlines()[0].strip()


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_no_module_imports_a_private_name_of_another(path: Path) -> None:
    private = [
        f"{node.module}.{alias.name}"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
        if alias.name.startswith("_")
    ]

    assert private == []


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
