"""The AsyncAPI 3.0 document: valid against the official schema, and true to the catalog."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonschema
import msgspec
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from message_bus import MessageType, ValidationError
from message_bus.app.asyncapi import (
    PARTITION_KEY_PARAMETER,
    Operation,
    asyncapi_document,
    dump_json,
    dump_yaml,
    payload_struct,
)
from message_bus.app.config import load_settings
from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.codec import H_CREATED_AT, H_MSG_ID, H_PARTITION_KEY, H_TYPE, JSON_ENCODER
from message_bus.domain.payloads import PaymentInstruction

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "asyncapi"
SCHEMA = json.loads((SCHEMA_DIR / "schema-3.0.0.json").read_text(encoding="utf-8"))
VALIDATOR = jsonschema.Draft7Validator(
    SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER
)

HANDLERS = [
    Operation(MessageType.PAYMENT_INSTRUCTION, "netting", "partition", handler="net"),
    Operation(MessageType.PAYMENT_INSTRUCTION, "screening"),
    Operation(MessageType.BANK_CONFIRMATION, "settlement"),
    Operation(MessageType.RISK_ASSESSMENT, "risk-engine"),
]


def schema_errors(document: Any) -> list[str]:
    """Every violation of the AsyncAPI 3.0.0 schema, as ``path: message``."""
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
        for e in VALIDATOR.iter_errors(document)
    ]


def local_refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from local_refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from local_refs(item)


def pointer(document: Any, ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node = document
    for token in ref[2:].split("/"):
        assert isinstance(node, dict), f"{ref} does not resolve"
        assert token in node, f"{ref} does not resolve"
        node = node[token]
    return node


@pytest.fixture
def document() -> dict[str, Any]:
    settings = load_settings(
        environ={"DELTRAN_NATS_URLS": "nats://alice:s3cret@nats-a:4222,tls://[::1]:4443"}
    )
    return asyncapi_document(StreamCatalog.default(), HANDLERS, settings=settings)


def test_the_vendored_schema_is_the_official_3_0_0_one_with_its_licence() -> None:
    assert SCHEMA["$id"] == "http://asyncapi.com/definitions/3.0.0/asyncapi.json"
    assert SCHEMA["properties"]["asyncapi"]["const"] == "3.0.0"
    assert "Apache License" in (SCHEMA_DIR / "LICENSE").read_text(encoding="utf-8")
    assert "AsyncAPI Initiative" in (SCHEMA_DIR / "NOTICE").read_text(encoding="utf-8")


def test_the_document_validates_against_the_asyncapi_3_schema(document: dict[str, Any]) -> None:
    assert schema_errors(document) == []
    assert schema_errors(asyncapi_document()) == []  # no settings, no handlers


@pytest.mark.parametrize(
    ("what", "mutate"),
    [
        (
            "an unknown operation action",
            lambda d: d["operations"]["sendCheckpoint"].update(action="publish"),
        ),
        ("no info", lambda d: d.pop("info")),
        ("another AsyncAPI version", lambda d: d.update(asyncapi="2.6.0")),
        (
            "a channel address that is not a string",
            lambda d: d["channels"]["Checkpoint"].update(address=7),
        ),
        ("a server without a host", lambda d: d["servers"]["nats-0"].pop("host")),
        (
            "an operation without a channel",
            lambda d: d["operations"]["sendCheckpoint"].pop("channel"),
        ),
        (
            "a NATS queue binding with an unknown field",
            lambda d: d["operations"]["receiveRiskAssessment-risk-engine"]["bindings"][
                "nats"
            ].update(durable="x"),
        ),
        (
            "a message field that AsyncAPI does not know",
            lambda d: d["components"]["messages"]["Checkpoint"].update(subject="deltran.x"),
        ),
    ],
)
def test_a_broken_document_fails_the_schema(
    document: dict[str, Any], what: str, mutate: Any
) -> None:
    broken = copy.deepcopy(document)
    mutate(broken)
    assert schema_errors(broken), f"{what} passed the schema"


def test_every_reference_in_the_document_resolves(document: dict[str, Any]) -> None:
    refs = set(local_refs(document))
    assert refs
    for ref in refs:
        pointer(document, ref)


def test_each_type_is_a_channel_on_its_subjects_with_the_partition_key_parameter(
    document: dict[str, Any],
) -> None:
    catalog = StreamCatalog.default()
    assert set(document["channels"]) == {t.value for t in MessageType}
    for message_type in MessageType:
        channel = document["channels"][message_type.value]
        assert channel["address"] == f"{message_type.subject_prefix}.{{{PARTITION_KEY_PARAMETER}}}"
        assert set(channel["parameters"]) == {PARTITION_KEY_PARAMETER}
        stream = catalog.stream_for(message_type)
        if stream is None:
            assert "x-deltran-stream" not in channel
        else:
            assert channel["x-deltran-stream"]["name"] == stream.name
            assert channel["x-deltran-stream"]["maxAgeSeconds"] == stream.max_age
        send = document["operations"][f"send{message_type.value}"]
        assert send["action"] == "send"
        assert pointer(document, send["channel"]["$ref"]) is channel


def test_a_catalog_with_another_max_age_shows_it() -> None:
    catalog = StreamCatalog.default().with_max_age(MessageType.CHECKPOINT, 3600.0)
    document = asyncapi_document(catalog)
    assert document["channels"]["Checkpoint"]["x-deltran-stream"]["maxAgeSeconds"] == 3600.0
    assert "kept 3600 s" in document["channels"]["Checkpoint"]["description"]


def test_each_consumer_group_is_a_receive_operation_with_its_ordering(
    document: dict[str, Any],
) -> None:
    receives = {k: v for k, v in document["operations"].items() if v["action"] == "receive"}
    assert set(receives) == {
        "receivePaymentInstruction-netting",
        "receivePaymentInstruction-screening",
        "receiveBankConfirmation-settlement",
        "receiveRiskAssessment-risk-engine",
    }
    netting = receives["receivePaymentInstruction-netting"]
    assert netting["x-deltran-consumer-group"] == "netting"
    assert netting["x-deltran-ordering"] == "partition"
    assert netting["x-deltran-handler"] == "net"
    assert pointer(document, netting["channel"]["$ref"])["address"].startswith(
        "deltran.payment.instruction."
    )
    assert receives["receivePaymentInstruction-screening"]["x-deltran-ordering"] == "none"
    # a core NATS type's group is a queue group
    risk = receives["receiveRiskAssessment-risk-engine"]
    assert risk["bindings"]["nats"]["queue"] == "risk-engine"
    assert "bindings" not in netting


def test_a_handler_registered_twice_is_one_operation_and_conflicting_orderings_are_refused() -> (
    None
):
    twice = [Operation(MessageType.CHECKPOINT, "audit")] * 2
    document = asyncapi_document(operations=twice)
    assert [k for k in document["operations"] if k.startswith("receive")] == [
        "receiveCheckpoint-audit"
    ]
    with pytest.raises(ValidationError) as raised:
        asyncapi_document(
            operations=[
                Operation(MessageType.CHECKPOINT, "audit"),
                Operation(MessageType.CHECKPOINT, "audit", "partition"),
            ]
        )
    assert raised.value.field == "operations"


def test_an_operation_of_a_type_that_is_not_described_is_refused() -> None:
    with pytest.raises(ValidationError) as raised:
        asyncapi_document(
            operations=[Operation(MessageType.CHECKPOINT, "audit")],
            message_types=[MessageType.PAYMENT_INSTRUCTION],
        )
    assert raised.value.field == "operations"
    with pytest.raises(ValidationError):
        asyncapi_document(operations=[("Checkpoint", "audit")])  # type: ignore[list-item]


def test_messages_carry_the_envelope_headers(document: dict[str, Any]) -> None:
    for message_type in MessageType:
        message = document["components"]["messages"][message_type.value]
        headers = message["headers"]
        assert message["contentType"] == "application/json"
        assert headers["required"] == [H_MSG_ID, H_TYPE, H_PARTITION_KEY, H_CREATED_AT]
        assert headers["properties"][H_TYPE]["const"] == message_type.value
        assert {"traceparent", "Deltran-Correlation-Id", "Deltran-Causation-Id"} <= set(
            headers["properties"]
        )
    partitions = document["components"]["messages"]["Checkpoint"]["headers"]["properties"]
    assert "this deployment publishes 32" in partitions["Deltran-Partitions"]["description"]


def test_the_headers_schema_accepts_real_headers_and_refuses_a_missing_id() -> None:
    from message_bus import Message, PartitionKey
    from message_bus.domain.codec import WireCodec

    headers_schema = asyncapi_document()["components"]["messages"]["PaymentInstruction"]["headers"]
    message = Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        PartitionKey.corridor("USD-EUR"),
        {"x": 1},
        correlation_id="corr-1",
        headers={"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
    )
    encoded = WireCodec().encode(message)
    headers = dict(encoded.headers)
    checker = jsonschema.Draft7Validator.FORMAT_CHECKER
    jsonschema.validate(headers, headers_schema, format_checker=checker)
    del headers[H_MSG_ID]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(headers, headers_schema, format_checker=checker)


def test_payload_schemas_come_from_the_structs_and_validate_real_payloads(
    document: dict[str, Any],
) -> None:
    message = document["components"]["messages"]["PaymentInstruction"]
    schema = pointer(document, message["payload"]["$ref"])
    fields = msgspec.structs.fields(PaymentInstruction)
    assert schema["required"] == [f.encode_name for f in fields if f.required]
    assert set(schema["properties"]) == {f.encode_name for f in fields}
    assert message["summary"] == (PaymentInstruction.__doc__ or "").strip().splitlines()[0]
    payload = PaymentInstruction(
        payment_id="pay-1",
        amount=Decimal("10.50"),
        currency="USD",
        debtor_bank="BANKUS33",
        creditor_bank="BANKGB2L",
    )
    wire = json.loads(JSON_ENCODER.encode(payload))
    jsonschema.validate(wire, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**wire, "currency": "usd"}, schema)


def test_a_type_without_a_struct_has_a_free_form_payload_and_a_mapping_overrides() -> None:
    without = next((t for t in MessageType if payload_struct(t) is None), None)
    if without is not None:
        payload = asyncapi_document()["components"]["messages"][without.value]["payload"]
        assert payload["type"] == "object"
        assert payload["additionalProperties"] is True

    class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
        """An audit record."""

        record_id: str

    document = asyncapi_document(
        payload_types={MessageType.SYSTEM_EVENT: AuditRecord, MessageType.CHECKPOINT: None}
    )
    messages = document["components"]["messages"]
    assert messages["SystemEvent"]["payload"] == {"$ref": "#/components/schemas/AuditRecord"}
    assert document["components"]["schemas"]["AuditRecord"]["required"] == ["record_id"]
    assert messages["Checkpoint"]["payload"]["additionalProperties"] is True
    assert schema_errors(document) == []


def test_servers_come_from_the_settings_without_credentials(document: dict[str, Any]) -> None:
    servers = document["servers"]
    assert servers["nats-0"] == {
        "host": "nats-a:4222",
        "protocol": "nats",
        "description": "NATS server (nats://) with TLS",
    }
    assert servers["nats-1"]["host"] == "[::1]:4443"
    text = dump_json(document)
    assert "s3cret" not in text
    assert "alice" not in text


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("message_type", {"message_type": "PaymentInstruction", "group": "g"}),
        ("group", {"message_type": MessageType.CHECKPOINT, "group": "a.b"}),
        ("group", {"message_type": MessageType.CHECKPOINT, "group": "a__b"}),
        ("group", {"message_type": MessageType.CHECKPOINT, "group": ""}),
        ("ordering", {"message_type": MessageType.CHECKPOINT, "group": "g", "ordering": "key"}),
        ("handler", {"message_type": MessageType.CHECKPOINT, "group": "g", "handler": " "}),
    ],
)
def test_a_bad_operation_is_refused_naming_the_field(field: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as raised:
        Operation(**kwargs)
    assert raised.value.field == field


@given(group=st.text(max_size=70))
def test_an_operation_takes_exactly_the_consumer_group_names(group: str) -> None:
    from message_bus.ports.config import check_consumer_name_part

    try:
        check_consumer_name_part("group", group)
    except ValidationError:
        with pytest.raises(ValidationError):
            Operation(MessageType.CHECKPOINT, group)
        return
    document = asyncapi_document(operations=[Operation(MessageType.CHECKPOINT, group)])
    assert f"receiveCheckpoint-{group}" in document["operations"]


def test_the_yaml_is_the_same_document(document: dict[str, Any]) -> None:
    assert yaml.safe_load(dump_yaml(document)) == document
    assert json.loads(dump_json(document)) == document


json_like = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(), json_like, max_size=6))
def test_the_yaml_writer_round_trips_any_json_document(value: dict[str, Any]) -> None:
    assert yaml.safe_load(dump_yaml(value)) == value


def test_every_type_with_a_struct_gets_its_schema_and_only_the_others_are_free_form() -> None:
    document = asyncapi_document()
    for message_type in MessageType:
        payload = document["components"]["messages"][message_type.value]["payload"]
        struct = payload_struct(message_type)
        if struct is None:
            assert payload["additionalProperties"] is True
        else:
            assert payload == {"$ref": f"#/components/schemas/{struct.__name__}"}
            assert pointer(document, payload["$ref"])["title"] == struct.__name__


def test_the_document_is_the_same_every_time() -> None:
    assert dump_json(asyncapi_document(operations=HANDLERS)) == dump_json(
        asyncapi_document(operations=HANDLERS)
    )


def test_a_registered_type_gets_its_channel_and_its_payload_schema() -> None:
    import msgspec

    class Verdict(msgspec.Struct, frozen=True, kw_only=True):
        payment_id: str
        hold: bool

    verdict = MessageType.register("AsyncapiVerdict", "asyncapi.verdict", payload=Verdict)
    try:
        document = asyncapi_document()
    finally:
        MessageType.unregister(verdict)
    assert schema_errors(document) == []
    assert "AsyncapiVerdict" in document["channels"]
    payload = json.dumps(document["components"]["messages"]["AsyncapiVerdict"]["payload"])
    assert "Verdict" in payload
