"""The message catalog: the eleven built-in types, and types applications register."""

from __future__ import annotations

import argparse
import copy
import json
import pickle
from collections.abc import AsyncIterator, Iterator

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    StreamCatalog,
    SubscriberConfig,
    ValidationError,
)
from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.app.cli import run_cli
from message_bus.app.cli.arguments import parse_message_type
from message_bus.app.cli.type_modules import import_type_modules
from message_bus.app.config import load_settings
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.domain.catalog import CatalogConflictError, check_type_subject
from message_bus.domain.codec import WireCodec

KEY = PartitionKey.corridor("USD-EUR")


class FraudAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A fraud screening raised an alert on a payment."""

    payment_id: str
    score: float


@pytest.fixture
def fraud_alert() -> Iterator[MessageType]:
    """FraudAlert registered for one test, then removed again."""
    registered = MessageType.register(
        "FraudAlert", "fraud.alert", payload=FraudAlert, stream="FRAUD_ALERTS", max_age=3600.0
    )
    yield registered
    MessageType.unregister(registered)


def test_the_eleven_builtin_types_behave_like_the_former_enum() -> None:
    builtins = list(MessageType)
    assert len(MessageType) == len(builtins) == 11
    assert builtins[0] is MessageType.PAYMENT_INSTRUCTION
    assert MessageType("PaymentInstruction") is MessageType.PAYMENT_INSTRUCTION
    assert MessageType(MessageType.CHECKPOINT) is MessageType.CHECKPOINT
    assert MessageType["SYSTEM_EVENT"] is MessageType.SYSTEM_EVENT
    assert MessageType.from_wire("Checkpoint") is MessageType.CHECKPOINT
    assert MessageType.CHECKPOINT.subject_prefix == "deltran.consensus.checkpoint"
    assert MessageType.RISK_ASSESSMENT.stream is None
    assert pickle.loads(pickle.dumps(MessageType.CHECKPOINT)) is MessageType.CHECKPOINT
    assert copy.deepcopy(MessageType.CHECKPOINT) is MessageType.CHECKPOINT
    assert MessageType.CHECKPOINT in MessageType
    with pytest.raises(ValueError, match="not a registered MessageType"):
        MessageType("Nope")
    with pytest.raises(AttributeError):
        MessageType.CHECKPOINT.value = "Other"  # type: ignore[misc]


def test_a_registered_type_joins_the_catalog_and_the_default_streams(
    fraud_alert: MessageType,
) -> None:
    assert fraud_alert.name == "FRAUD_ALERT"
    assert fraud_alert.value == "FraudAlert"
    assert fraud_alert.subject_prefix == "deltran.fraud.alert"
    assert fraud_alert.payload_type is FraudAlert
    assert not fraud_alert.is_builtin
    assert list(MessageType)[-1] is fraud_alert
    assert MessageType("FraudAlert") is fraud_alert
    spec = StreamCatalog.default().stream_for(fraud_alert)
    assert spec is not None
    assert (spec.name, spec.subjects, spec.max_age) == (
        "FRAUD_ALERTS",
        ("deltran.fraud.alert.>",),
        3600.0,
    )
    assert parse_message_type("fraud-alert") is fraud_alert


def test_an_unregistered_type_is_gone_and_a_builtin_cannot_be_removed() -> None:
    registered = MessageType.register("ShortLived", "short.lived")
    MessageType.unregister(registered)
    assert "ShortLived" not in [t.value for t in MessageType]
    with pytest.raises(argparse.ArgumentTypeError):
        parse_message_type("ShortLived")
    with pytest.raises(ValidationError):
        MessageType.unregister(MessageType.CHECKPOINT)


@pytest.mark.parametrize(
    ("name", "subject", "stream", "field"),
    [
        ("PaymentInstruction", "payment.other", None, "name"),
        ("PaymentOrder", "payment.instruction", None, "subject"),
        ("PaymentAll", "payment", None, "subject"),  # would capture payment.instruction.>
        ("PaymentDeep", "payment.instruction.extra", None, "subject"),
        ("Proofs", "proof.other", "SETTLEMENT_PROOFS", "stream"),
        ("Dead", "dead.things", "DEAD_LETTERS", "stream"),
    ],
)
def test_registering_over_an_existing_name_subject_or_stream_is_refused(
    name: str, subject: str, stream: str | None, field: str
) -> None:
    before = list(MessageType)
    with pytest.raises(CatalogConflictError) as caught:
        MessageType.register(name, subject, stream=stream)
    assert isinstance(caught.value, ValidationError)
    assert caught.value.field == field
    assert caught.value.value == {"name": name, "subject": subject, "stream": stream}[field]
    assert list(MessageType) == before


def test_a_collision_with_a_registered_type_names_it(fraud_alert: MessageType) -> None:
    with pytest.raises(CatalogConflictError) as caught:
        MessageType.register("FraudCase", "fraud.alert.case")
    assert caught.value.existing == "FraudAlert"


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"name": "fraudAlert", "subject": "fraud.x"}, "name"),
        ({"name": "Fraud Alert", "subject": "fraud.x"}, "name"),
        ({"name": "FraudX", "subject": "Fraud.X"}, "subject"),
        ({"name": "FraudX", "subject": "fraud.*"}, "subject"),
        ({"name": "FraudX", "subject": "dlq.fraud"}, "subject"),
        ({"name": "FraudX", "subject": "replay.fraud"}, "subject"),
        ({"name": "FraudX", "subject": "fraud..x"}, "subject"),
        ({"name": "FraudX", "subject": "fraud.x", "stream": "FRAUD.X"}, "stream"),
        ({"name": "FraudX", "subject": "fraud.x", "stream": "F", "max_age": 0}, "max_age"),
        ({"name": "FraudX", "subject": "fraud.x", "payload": dict}, "payload"),
    ],
)
def test_malformed_registrations_are_refused_naming_the_field(
    arguments: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        MessageType.register(**arguments)  # type: ignore[arg-type]
    assert caught.value.field == field


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_a_type_subject_is_accepted_only_if_it_is_safe_dotted_tokens(text: str) -> None:
    try:
        check_type_subject(text)
    except ValidationError as exc:
        field = exc.field
        assert field == "subject"
    else:
        assert all(token and token[0].isalpha() for token in text.split("."))
        assert not set(text) & set(" *>\r\n\t\0")


async def test_a_registered_type_is_published_checked_stored_and_consumed_in_memory(
    fraud_alert: MessageType,
) -> None:
    async with InMemoryBroker(clock=ManualClock()) as broker:
        received: list[Message] = []

        async def keep(message: Message) -> None:
            received.append(message)

        await broker.subscriber(fraud_alert, SubscriberConfig(consumer_group="fraud")).subscribe(
            FunctionHandler(keep)
        )
        publisher = broker.publisher()
        with pytest.raises(ValidationError) as caught:
            await publisher.publish(Message.new(fraud_alert, KEY, {"payment_id": "p"}))
        assert caught.value.field == "payload"
        sent = Message.new(fraud_alert, KEY, FraudAlert(payment_id="pay-1", score=0.9))
        receipt = await publisher.publish(sent)
        assert (receipt.stream, receipt.subject) == (
            "FRAUD_ALERTS",
            "deltran.fraud.alert.corridor.USD-EUR",
        )
        await broker.settle()
        assert [m.id for m in received] == [sent.id]
        assert received[0].message_type is fraud_alert
        assert received[0].payload_as(FraudAlert) == FraudAlert(payment_id="pay-1", score=0.9)
        assert broker.stream_info("FRAUD_ALERTS").messages == 1


def test_the_codec_decodes_a_registered_type_by_its_wire_name(fraud_alert: MessageType) -> None:
    codec = WireCodec()
    sent = Message.new(fraud_alert, KEY, {"payment_id": "p", "score": 0.5})
    encoded = codec.encode(sent)
    assert encoded.headers["Deltran-Type"] == "FraudAlert"
    assert codec.decode(*encoded).message_type is fraud_alert


@pytest.fixture
async def bus(fraud_alert: MessageType) -> AsyncIterator[Container]:
    """An in-memory bus built after FraudAlert was registered."""
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    await start_container(container)
    yield container
    await shutdown_container(container)


async def test_the_container_and_the_cli_know_a_registered_type(
    bus: Container, fraud_alert: MessageType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bus.catalog().stream_for(fraud_alert) is not None
    bad = ["publish", "FraudAlert", "corridor.USD-EUR", '{"payment_id": "p"}']
    assert await run_cli(bad, container=bus) == 2
    assert "score" in capsys.readouterr().err
    good = ["publish", "fraud.alert", "corridor.USD-EUR", '{"payment_id": "p", "score": 0.5}']
    assert await run_cli(good, container=bus) == 0
    assert "FRAUD_ALERTS" in capsys.readouterr().out
    argv = ["subscribe", "FraudAlert", "--count", "1", "--timeout", "5"]
    assert await run_cli(argv, container=bus) == 0
    assert json.loads(capsys.readouterr().out)["payload"]["score"] == 0.5
    assert await run_cli(["streams", "ls"], container=bus) == 0
    assert "FRAUD_ALERTS" in capsys.readouterr().out


def test_the_cli_imports_the_modules_named_in_deltran_types() -> None:
    assert import_type_modules({"DELTRAN_TYPES": "json, decimal"}) == ["json", "decimal"]
    with pytest.raises(Exception, match="cannot import"):
        import_type_modules({"DELTRAN_TYPES": "no_such_module_here"})
    with pytest.raises(Exception, match="not a module name"):
        import_type_modules({"DELTRAN_TYPES": "a b"})
