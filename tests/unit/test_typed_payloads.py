"""Typed payloads: every type's Struct, one check shared by publishers and the CLI."""

from __future__ import annotations

import json
import math
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from message_bus import Message, MessageType, PartitionKey, PublisherConfig, ValidationError
from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.app import load_settings
from message_bus.app.cli import run_cli
from message_bus.app.containers import (
    Container,
    build_container,
    shutdown_container,
    start_container,
)
from message_bus.domain import payload_schema
from message_bus.domain.codec import WireCodec
from message_bus.domain.payload_schema import check_payload, convert_payload
from message_bus.domain.payloads import AdapterResponse, PaymentInstruction, TransferStatus
from message_bus.testing.samples import sample_payload

KEY = PartitionKey.corridor("USD-EUR")


@pytest.fixture
async def bus() -> AsyncIterator[Container]:
    """An in-memory bus for the CLI's commands."""
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    await start_container(container)
    yield container
    await shutdown_container(container)


PAYMENT = MessageType.PAYMENT_INSTRUCTION
BUILTINS = [t for t in MessageType if t.is_builtin]


def test_every_builtin_type_has_a_frozen_kw_only_struct() -> None:
    assert len(BUILTINS) == 11
    for message_type in BUILTINS:
        schema = message_type.payload_type
        assert schema is not None, message_type
        assert issubclass(schema, msgspec.Struct), message_type
        assert schema.__struct_config__.frozen
        with pytest.raises(TypeError):  # keyword-only: no positional arguments
            schema("x")


@pytest.mark.parametrize("message_type", BUILTINS, ids=lambda t: t.value)
def test_each_types_sample_converts_and_round_trips_through_the_codec(
    message_type: MessageType,
) -> None:
    schema = message_type.payload_type
    assert schema is not None
    typed = convert_payload(sample_payload(message_type), schema)
    codec = WireCodec()
    received = codec.decode(*codec.encode(Message.new(message_type, KEY, typed)))
    assert received.payload_as(schema) == typed


def test_money_travels_as_a_decimal_string() -> None:
    typed = convert_payload(sample_payload(PAYMENT, amount="1000.10"), PaymentInstruction)
    assert typed.amount == Decimal("1000.10")
    body = WireCodec().encode(Message.new(PAYMENT, KEY, typed)).body
    assert json.loads(body)["amount"] == "1000.10"


@pytest.mark.parametrize(
    ("changes", "field", "value"),
    [
        ({"debtor_bank": "bankgb2l"}, "payload.debtor_bank", "bankgb2l"),
        ({"corridor": "USD.EUR"}, "payload.corridor", "USD.EUR"),
        ({"amount": "-5"}, "payload.amount", Decimal("-5")),
        ({"amount": "NaN"}, "payload.amount", Decimal("NaN")),
        ({"amount": "Infinity"}, "payload.amount", Decimal("Infinity")),
        ({"currency": 840}, "payload.currency", 840),
    ],
)
def test_a_bad_field_is_named_with_its_path_and_value(
    changes: dict[str, Any], field: str, value: Any
) -> None:
    with pytest.raises(ValidationError) as caught:
        check_payload(PAYMENT, sample_payload(PAYMENT, **changes))
    assert caught.value.field == field
    assert caught.value.value == value or (isinstance(value, Decimal) and value.is_nan())


def test_a_nested_field_is_named_with_its_key() -> None:
    proposal = sample_payload(
        MessageType.NETTING_PROPOSAL, positions={"BANKUS33": "-1", "nope": "1"}
    )
    with pytest.raises(ValidationError) as caught:
        check_payload(MessageType.NETTING_PROPOSAL, proposal)
    assert caught.value.field == "payload.positions['nope']"


def test_a_missing_field_and_an_enum_outside_its_values_are_refused() -> None:
    with pytest.raises(ValidationError, match="payment_id"):
        check_payload(PAYMENT, sample_payload(PAYMENT, payment_id=None))
    response = sample_payload(MessageType.ADAPTER_RESPONSE, status="MAYBE")
    with pytest.raises(ValidationError) as caught:
        check_payload(MessageType.ADAPTER_RESPONSE, response)
    assert caught.value.field == "payload.status"
    typed = convert_payload(sample_payload(MessageType.ADAPTER_RESPONSE), AdapterResponse)
    assert typed.status is TransferStatus.SETTLED


def test_building_a_struct_in_code_runs_the_domain_checks() -> None:
    with pytest.raises(ValidationError) as caught:
        PaymentInstruction(
            payment_id="p",
            amount=Decimal("1"),
            currency="USD",
            debtor_bank="BANK GB",
            creditor_bank="BANKDEFF",
        )
    assert (caught.value.field, caught.value.value) == ("debtor_bank", "BANK GB")


def test_a_struct_of_another_type_is_refused() -> None:
    typed = convert_payload(sample_payload(MessageType.ADAPTER_RESPONSE), AdapterResponse)
    with pytest.raises(ValidationError, match="must be a PaymentInstruction"):
        check_payload(PAYMENT, typed)


def test_a_struct_instance_is_not_converted_again_and_a_dict_is_converted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    conversions: list[object] = []
    real = payload_schema.convert_payload

    def counting(payload: Any, schema: Any) -> Any:
        conversions.append(payload)
        return real(payload, schema)

    monkeypatch.setattr(payload_schema, "convert_payload", counting)
    typed = real(sample_payload(PAYMENT), PaymentInstruction)
    check_payload(PAYMENT, typed)
    assert conversions == []
    check_payload(PAYMENT, sample_payload(PAYMENT))
    assert len(conversions) == 1


def test_checking_a_struct_instance_costs_far_less_than_converting_a_dict() -> None:
    typed = convert_payload(sample_payload(PAYMENT), PaymentInstruction)
    as_dict = sample_payload(PAYMENT)
    rounds = 2000

    def cost(payload: Any) -> float:
        best = math.inf
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(rounds):
                check_payload(PAYMENT, payload)
            best = min(best, time.perf_counter() - started)
        return best / rounds

    assert cost(typed) < cost(as_dict)


async def test_publish_refuses_a_bad_payload_before_anything_is_stored() -> None:
    async with InMemoryBroker(clock=ManualClock()) as broker:
        publisher = broker.publisher()
        bad = Message.new(PAYMENT, KEY, sample_payload(PAYMENT, debtor_bank="nope"))
        good = Message.new(PAYMENT, KEY, sample_payload(PAYMENT))
        with pytest.raises(ValidationError) as caught:
            await publisher.publish(bad)
        assert (caught.value.field, caught.value.value) == ("payload.debtor_bank", "nope")
        with pytest.raises(ValidationError):
            await publisher.publish_many([good, bad])
        core = Message.new(MessageType.RISK_ASSESSMENT, KEY, {"exposure": "10"})
        with pytest.raises(ValidationError, match="payment_id"):
            await publisher.request(core, timeout=1.0)
        assert broker.stream_info("PAYMENT_INSTRUCTIONS").messages == 0


async def test_validation_can_be_switched_off_for_free_form_payloads() -> None:
    async with InMemoryBroker(clock=ManualClock()) as broker:
        publisher = broker.publisher(PublisherConfig(validate_payloads=False))
        receipt = await publisher.publish(Message.new(PAYMENT, KEY, {"n": 1}))
        assert receipt.sequence == 1


async def test_non_finite_floats_stay_refused_with_validation_off() -> None:
    async with InMemoryBroker(clock=ManualClock()) as broker:
        publisher = broker.publisher(PublisherConfig(validate_payloads=False))
        good = Message.new(PAYMENT, KEY, {"amount": 1.5})
        smuggled = msgspec.structs.replace(good, payload={"amount": math.inf})
        with pytest.raises(ValidationError, match=r"payload\.amount"):
            await publisher.publish(smuggled)


def test_validate_payloads_must_be_a_bool() -> None:
    with pytest.raises(ValidationError) as caught:
        PublisherConfig(validate_payloads="no")  # type: ignore[arg-type]
    assert caught.value.field == "validate_payloads"


async def test_the_cli_refuses_with_the_publishers_own_error(
    bus: Container, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = json.dumps(sample_payload(MessageType.SETTLEMENT_PROOF, proof_hash="abc"))
    argv = ["publish", "SettlementProof", "corridor.USD-EUR", payload]
    assert await run_cli(argv, container=bus) == 2
    assert "invalid payload.proof_hash 'abc'" in capsys.readouterr().err
    with pytest.raises(ValidationError) as caught:
        check_payload(MessageType.SETTLEMENT_PROOF, json.loads(payload))
    assert caught.value.field == "payload.proof_hash"


async def test_the_cli_raw_flag_publishes_what_the_schema_refuses(bus: Container) -> None:
    argv = ["publish", "SettlementProof", "corridor.USD-EUR", '{"proof": 1}', "--raw"]
    assert await run_cli(argv, container=bus) == 0
    assert bus.publisher_config().validate_payloads  # --raw changed only its own publisher


finite_text = st.text(max_size=12)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_text | st.decimals(allow_nan=False),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(finite_text, inner, max_size=3),
    max_leaves=10,
)
fields = st.sampled_from(
    ["payment_id", "amount", "currency", "debtor_bank", "creditor_bank", "corridor"]
)


@settings(max_examples=300, deadline=None)
@given(field=fields, value=json_values, message_type=st.sampled_from(BUILTINS))
def test_any_changed_field_is_accepted_or_refused_as_a_validation_error_naming_payload(
    field: str, value: Any, message_type: MessageType
) -> None:
    payload = sample_payload(message_type)
    payload[field] = value
    field = "payload"
    try:
        check_payload(message_type, payload)
    except ValidationError as exc:
        field = exc.field
    assert field.startswith("payload"), field


@settings(max_examples=200, deadline=None)
@given(bic=st.from_regex(r"\A[A-Z]{6}[A-Z0-9]{2}([A-Z0-9]{3})?\Z"))
def test_every_bic_the_domain_accepts_the_payload_accepts(bic: str) -> None:
    check_payload(PAYMENT, sample_payload(PAYMENT, debtor_bank=bic))


def test_the_switch_is_a_setting_like_every_publisher_field() -> None:
    environ = {"DELTRAN_BACKEND": "memory", "DELTRAN_PUBLISH_VALIDATE_PAYLOADS": "false"}
    assert not build_container(load_settings(environ=environ)).publisher_config().validate_payloads
    default = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    assert default.publisher_config().validate_payloads
