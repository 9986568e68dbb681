"""The package's structure holds: one job per module, no private names across modules,
nats-py's internals touched in one fenced module that checks them all."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from message_bus.adapters.nats.internals import (
    INTERNALS,
    Connection,
    UnsupportedClientError,
    check_internals,
    missing_internals,
)

SRC = Path(__file__).resolve().parents[2] / "src"
MODULES = sorted(SRC.rglob("*.py"))
NATS_ADAPTER = SRC / "adapters" / "nats"
FENCE = NATS_ADAPTER / "internals.py"
MEMORY_ADAPTER = SRC / "adapters" / "memory"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _name(path: Path) -> str:
    return str(path.relative_to(SRC))


def test_every_module_names_its_one_job_in_the_first_line_of_its_docstring() -> None:
    vague = []
    for path in MODULES:
        doc = ast.get_docstring(_tree(path))
        first = doc.splitlines()[0].strip() if doc else ""
        if len(first) < 15 or not first.endswith((".", ":")):
            vague.append(f"{_name(path)}: {first!r}")
    assert not vague, "modules without a one-line statement of their job:\n" + "\n".join(vague)


def test_no_module_imports_a_private_name_of_another_module() -> None:
    found = []
    for path in MODULES:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom) and node.module != "__future__":
                for alias in node.names:
                    if alias.name.startswith("_") and not alias.name.startswith("__"):
                        found.append(f"{_name(path)}:{node.lineno} imports {alias.name}")
    assert not found, "\n".join(found)


def _foreign_private_reads(path: Path) -> list[str]:
    """``x._name`` where ``x`` is not ``self`` or ``cls``: reaching into another object."""
    found = []
    for node in ast.walk(_tree(path)):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append(f"{_name(path)}:{node.lineno} reads .{node.attr}")
    return found


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        (NATS_ADAPTER, FENCE),  # nats-py's internals, fenced
        (MEMORY_ADAPTER, MEMORY_ADAPTER / "broker.py"),  # consumers see a ConsumerHost
    ],
    ids=["nats", "memory"],
)
def test_within_an_adapter_one_module_at_most_reaches_into_private_names(
    package: Path, allowed: Path
) -> None:
    found = [
        line
        for path in sorted(package.rglob("*.py"))
        if path != allowed
        for line in _foreign_private_reads(path)
    ]
    assert not found, "\n".join(found)


def test_every_nats_py_internal_the_adapter_relies_on_is_listed_and_present() -> None:
    listed = {f"{owner}.{name}" for owner, names in INTERNALS.items() for name in names}
    private_reads = {line.rsplit(".", 1)[1] for line in _foreign_private_reads(FENCE)}
    for name in private_reads:
        assert any(entry.endswith(f".{name}") for entry in listed), (
            f"internals.py reads {name} but INTERNALS does not list it"
        )
    assert missing_internals(Connection()) == []


def test_a_nats_py_without_one_of_them_is_refused_naming_it() -> None:
    nc = Connection()
    del nc._pongs

    assert missing_internals(nc) == ["Client._pongs"]
    with pytest.raises(UnsupportedClientError, match=r"Client\._pongs"):
        check_internals(nc)


def test_every_package_of_the_source_tree_ships_in_the_distribution() -> None:
    import tomllib

    project = tomllib.loads((SRC.parent / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(project["tool"]["setuptools"]["packages"])
    packages = {
        ".".join(("message_bus", *init.parent.relative_to(SRC).parts))
        for init in SRC.rglob("__init__.py")
    }
    assert packages <= listed, f"not in pyproject's packages: {sorted(packages - listed)}"
