"""The in-memory adapter's consumers see the broker only through their ``ConsumerHost``."""

from __future__ import annotations

import ast
from pathlib import Path

MEMORY = Path(__file__).resolve().parents[2] / "src" / "adapters" / "memory"
BROKER = MEMORY / "broker.py"
CONSUMER_SIDE = sorted(p for p in MEMORY.glob("*.py") if p not in (BROKER, MEMORY / "__init__.py"))


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_consumer_side_modules_exist() -> None:
    names = {path.name for path in CONSUMER_SIDE}
    assert {"_group.py", "_worker.py", "_core.py", "_host.py"} <= names


def test_no_module_but_the_package_imports_the_broker() -> None:
    found = []
    for path in CONSUMER_SIDE:
        for node in ast.walk(_tree(path)):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                relative_broker = node.level == 1 and (
                    module == "broker" or any(a.name == "broker" for a in node.names)
                )
                if relative_broker or module == "message_bus.adapters.memory.broker":
                    found.append(f"{path.name}:{node.lineno}")
    assert not found, "imports the broker: " + ", ".join(found)


def test_only_the_broker_module_reaches_into_another_objects_private_names() -> None:
    found = []
    for path in CONSUMER_SIDE:
        for node in ast.walk(_tree(path)):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                found.append(f"{path.name}:{node.lineno} reads .{node.attr}")
    assert not found, "\n".join(found)
