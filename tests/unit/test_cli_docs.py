"""``deltran-bus docs asyncapi|html``: the document on stdout or in a file, the page, --app."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from message_bus.app.cli import run_cli

SCHEMA = json.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "asyncapi" / "schema-3.0.0.json").read_text(
        encoding="utf-8"
    )
)


@pytest.fixture(autouse=True)
def _no_deltran_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DELTRAN_BACKEND", "DELTRAN_NATS_URLS", "DELTRAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)


def assert_valid(document: Any) -> None:
    errors = [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(document)]
    assert errors == []


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable module (in the current directory) holding handler registrations."""
    name = f"docs_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from message_bus import MessageType\n"
        "from message_bus.app.asyncapi import Operation\n"
        "class Bus:\n"
        "    def asyncapi_operations(self):\n"
        "        return [Operation(MessageType.PAYMENT_INSTRUCTION, 'netting', 'partition')]\n"
        "bus = Bus()\n"
        "handlers = [Operation(MessageType.BANK_CONFIRMATION, 'settlement')]\n"
        "not_operations = [1, 2]\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


async def test_docs_asyncapi_prints_a_valid_json_document(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_cli(["docs", "asyncapi", "--url", "nats://nats-a:4222"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert_valid(document)
    assert document["servers"]["nats-0"]["host"] == "nats-a:4222"
    assert document["channels"]["PaymentInstruction"]["address"] == (
        "deltran.payment.instruction.{partitionKey}"
    )


async def test_docs_asyncapi_writes_yaml_by_flag_or_by_suffix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    by_suffix = tmp_path / "bus.yaml"
    assert await run_cli(["docs", "asyncapi", "--out", str(by_suffix)]) == 0
    assert "wrote" in capsys.readouterr().out
    document = yaml.safe_load(by_suffix.read_text(encoding="utf-8"))
    assert_valid(document)
    by_flag = tmp_path / "bus.txt"
    assert await run_cli(["docs", "asyncapi", "--out", str(by_flag), "--format", "yaml"]) == 0
    assert yaml.safe_load(by_flag.read_text(encoding="utf-8")) == document
    as_json = tmp_path / "bus.json"
    assert await run_cli(["docs", "asyncapi", "--out", str(as_json)]) == 0
    assert json.loads(as_json.read_text(encoding="utf-8")) == document


async def test_docs_asyncapi_adds_the_handlers_of_an_app_object_or_a_list(
    app_module: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_cli(["docs", "asyncapi", "--app", f"{app_module}:bus"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert_valid(document)
    netting = document["operations"]["receivePaymentInstruction-netting"]
    assert netting["x-deltran-ordering"] == "partition"

    assert await run_cli(["docs", "asyncapi", "--app", f"{app_module}:handlers"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert "receiveBankConfirmation-settlement" in document["operations"]


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_colon", "expected MODULE:ATTRIBUTE"),
        ("{module}:missing", "has no attribute"),
        ("{module}:not_operations", "not an Operation"),
        ("no_such_module_here:bus", "cannot import"),
    ],
)
async def test_a_bad_app_target_is_one_error_line_and_exit_2(
    app_module: str, target: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code = await run_cli(["docs", "asyncapi", "--app", target.format(module=app_module)])
    assert code == 2
    stderr = capsys.readouterr().err.strip()
    assert len(stderr.splitlines()) == 1, stderr
    assert says in stderr


async def test_docs_html_writes_the_page_and_the_document(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site" / "api"
    assert await run_cli(["docs", "html", "--out", str(out)]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "deltran.payment.instruction.{partitionKey}" in page
    assert_valid(json.loads((out / "asyncapi.json").read_text(encoding="utf-8")))


async def test_docs_html_needs_an_out_directory(capsys: pytest.CaptureFixture[str]) -> None:
    assert await run_cli(["docs", "html"]) == 2
    assert "--out" in capsys.readouterr().err


async def test_an_unwritable_out_is_one_error_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x", encoding="utf-8")
    assert await run_cli(["docs", "html", "--out", str(blocker / "sub")]) == 2
    assert "cannot create directory" in capsys.readouterr().err
    missing = tmp_path / "missing" / "doc.json"
    assert await run_cli(["docs", "asyncapi", "--out", str(missing)]) == 2
    assert "cannot write" in capsys.readouterr().err


async def test_docs_asyncapi_documents_the_handlers_of_a_real_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    name = f"docs_bus_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from message_bus import Message, MessageType\n"
        "from message_bus.app.bus import Bus\n"
        "from message_bus.app.config import load_settings\n"
        "bus = Bus(load_settings(environ={'DELTRAN_BACKEND': 'memory'}))\n"
        "@bus.handler(MessageType.PAYMENT_INSTRUCTION, group='netting', ordering='partition')\n"
        "async def net(message: Message) -> None:\n"
        "    return None\n"
        "@bus.handler(MessageType.BANK_CONFIRMATION, group='settlement')\n"
        "async def settle(message: Message) -> None:\n"
        "    return None\n",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))

    assert await run_cli(["docs", "asyncapi", "--app", f"{name}:bus"]) == 0

    document = json.loads(capsys.readouterr().out)
    assert_valid(document)
    operations = document["operations"]
    assert operations["receivePaymentInstruction-netting"]["x-deltran-ordering"] == "partition"
    assert operations["receiveBankConfirmation-settlement"]["x-deltran-ordering"] == "none"
