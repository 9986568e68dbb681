"""Every Python example in README.md runs as written, so the README cannot rot."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).parents[2] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_the_crates_examples() -> None:
    assert len(BLOCKS) >= 3


# A block defining test functions is a test module: pytest runs it with the bus's plugin
# (pytest-asyncio in its default, strict mode), and every test in it must pass.
PYTEST = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"]
PYTEST += ["-o", "asyncio_default_fixture_loop_scope=function"]


# A block that starts with a docstring naming a file (``"""service.py: ..."""``) is also
# written under that name beside every example, so a later block (its test) imports it.
MODULES = {
    match.group(1): block
    for block in BLOCKS
    if (match := re.match(r'"""(\w+)\.py:', block)) is not None
}


def _is_test_module(block: str) -> bool:
    return re.search(r"^(async )?def test_", block, flags=re.MULTILINE) is not None


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path) -> None:
    testing = _is_test_module(BLOCKS[index])
    script = tmp_path / f"{'test_' if testing else ''}readme_{index}.py"
    script.write_text(BLOCKS[index])
    for name, module in MODULES.items():
        (tmp_path / f"{name}.py").write_text(module)
    result = subprocess.run(
        [sys.executable, *(PYTEST if testing else ["-W", "error"]), str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    if testing:
        assert re.search(r"\b[1-9]\d* passed", result.stdout), result.stdout


def test_readme_quick_start_names_the_demo_and_the_test_command() -> None:
    text = README.read_text()
    assert "deltran-bus demo" in text
    assert "pytest" in text
