"""Bad input and bad configuration are refused early, typed, with the field named.

Non-finite numbers (configs, environment, TOML, payloads), backoff exponents, header
values with edge whitespace, handlers that cannot handle, requests of stream-backed
types, and a duplicate window shorter than a publisher's retry budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    PublisherConfig,
    RetryableError,
    SubscriberConfig,
    ValidationError,
    WireCodec,
    current_delivery,
)
from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.adapters.nats.framing import BlockCodec
from message_bus.app.cli import run_cli
from message_bus.app.config import load_settings
from message_bus.app.containers import build_container, shutdown_container, start_container
from message_bus.domain.errors import DuplicateWindowError, StreamError
from message_bus.domain.message import check_payload_numbers
from message_bus.ports.config import MAX_BACKOFF_EXPONENT, capped_backoff
from message_bus.ports.subscriber import check_handler
from message_bus.testing.samples import sample_payload

KEY = PartitionKey.corridor("USD-EUR")
NON_FINITE = [math.nan, math.inf, -math.inf]
positive = st.floats(min_value=0.0, max_value=1e300, allow_nan=False, allow_infinity=False)
attempts = st.integers(min_value=-5, max_value=10**9)


def new(payload: Any, **kwargs: Any) -> Message:
    return Message.new(MessageType.PAYMENT_INSTRUCTION, KEY, payload, **kwargs)


# -- 13: NaN and infinity ----------------------------------------------------------------


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize(
    ("config", "field"),
    [
        (PublisherConfig, "publish_timeout"),
        (PublisherConfig, "initial_retry_delay"),
        (PublisherConfig, "max_retry_delay"),
        (PublisherConfig, "circuit_breaker_cooldown"),
        (SubscriberConfig, "ack_wait"),
        (SubscriberConfig, "nak_initial_delay"),
        (SubscriberConfig, "nak_max_delay"),
    ],
)
def test_a_config_refuses_a_non_finite_duration(config: Any, field: str, value: float) -> None:
    with pytest.raises(ValidationError) as caught:
        config(**{field: value})
    assert caught.value.field == field


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "Infinity", " +inf "])
@pytest.mark.parametrize(
    "variable",
    [
        "DELTRAN_PUBLISH_TIMEOUT",
        "DELTRAN_ACK_WAIT",
        "DELTRAN_NAK_MAX_DELAY",
        "DELTRAN_DUPLICATE_WINDOW",
        "DELTRAN_NATS_DRAIN_TIMEOUT",
        "DELTRAN_TRACING_SAMPLE_RATIO",
    ],
)
def test_an_environment_variable_refuses_a_non_finite_number(variable: str, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(environ={variable: text})
    assert caught.value.field == variable
    assert caught.value.reason == "must be a finite number"


def test_a_toml_file_refuses_nan_and_inf_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bus.toml"
    path.write_text("[subscriber]\nack_wait = nan\n")
    with pytest.raises(ValidationError) as caught:
        load_settings(path, environ={})
    assert caught.value.field == f"subscriber.ack_wait in {path}"
    assert "finite" in caught.value.reason


@given(positive, positive, attempts, attempts)
def test_the_backoff_never_overflows_never_exceeds_its_cap_and_never_shrinks(
    initial: float, cap: float, first: int, second: int
) -> None:
    low, high = sorted((first, second))
    delay_low = capped_backoff(initial, cap, low)
    delay_high = capped_backoff(initial, cap, high)
    assert 0.0 <= delay_low <= delay_high <= cap
    assert math.isfinite(delay_high)


@given(positive, positive, attempts)
def test_nak_delay_and_retry_delay_are_the_capped_backoff(
    initial: float, cap: float, attempt: int
) -> None:
    subscriber = SubscriberConfig(nak_initial_delay=initial, nak_max_delay=cap)
    publisher = PublisherConfig(initial_retry_delay=initial, max_retry_delay=cap)
    expected = capped_backoff(initial, cap, attempt)
    assert subscriber.nak_delay(attempt) == expected
    assert publisher.retry_delay(attempt) == expected


@pytest.mark.parametrize("attempt", [1025, 1100, 10**6, 10**18])
def test_a_huge_delivery_count_gets_the_cap_not_an_overflow(attempt: int) -> None:
    assert SubscriberConfig().nak_delay(attempt) == 60.0
    assert PublisherConfig().retry_delay(attempt) == 2.0


def test_the_backoff_doubles_until_the_exponent_cap() -> None:
    assert [capped_backoff(1.0, 1e30, n) for n in (1, 2, 3, 4)] == [1.0, 2.0, 4.0, 8.0]
    top = capped_backoff(1.0, math.inf, MAX_BACKOFF_EXPONENT + 1)
    assert top == capped_backoff(1.0, math.inf, 10**9) == 2.0**MAX_BACKOFF_EXPONENT


@dataclass
class Leg:
    fee: Any


class Instruction(msgspec.Struct):
    amount: Any
    legs: list[Leg]


@pytest.mark.parametrize(
    ("payload", "path"),
    [
        ({"amount": math.nan}, "payload.amount"),
        ({"amount": math.inf}, "payload.amount"),
        ({"legs": [{"fee": 1.5}, {"fee": -math.inf}]}, "payload.legs[1].fee"),
        ({"a b": Decimal("NaN")}, "payload['a b']"),
        ({"amount": Decimal("-Infinity")}, "payload.amount"),
        ([1, 2, math.nan], "payload[2]"),
        (math.nan, "payload"),
        (Instruction(amount="1", legs=[Leg(fee=math.inf)]), "payload.legs[0].fee"),
    ],
)
def test_a_non_finite_number_in_a_payload_is_refused_naming_its_json_path(
    payload: Any, path: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        new(payload)
    assert caught.value.field == path
    assert "finite" in caught.value.reason


@pytest.mark.parametrize("codec", [WireCodec(), BlockCodec()], ids=["wire", "block"])
def test_a_message_built_around_message_new_is_refused_at_encode(codec: WireCodec) -> None:
    smuggled = msgspec.structs.replace(
        new(sample_payload(MessageType.PAYMENT_INSTRUCTION)), payload={"amount": math.nan}
    )
    encode = codec.encode_block if isinstance(codec, BlockCodec) else codec.encode
    with pytest.raises(ValidationError) as caught:
        encode(smuggled)
    assert caught.value.field == "payload.amount"


def test_none_and_the_text_null_or_nan_are_fine() -> None:
    payload = {"a": None, "b": "null", "c": "NaN", "d": ["Infinity"], "e": 0.0}
    message = new(payload)
    subject, headers, body = WireCodec().encode(message)
    assert WireCodec().decode(subject, headers, body).payload == payload


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)


@given(finite_or_not)
def test_a_float_payload_is_refused_exactly_when_it_is_not_finite(value: float) -> None:
    payload = {"amount": value, "legs": [value]}
    if not math.isfinite(value):
        with pytest.raises(ValidationError, match=r"payload\.amount"):
            new(payload)
        return
    message = new(payload)
    codec = WireCodec()
    assert codec.decode(*codec.encode(message)).payload == payload


def _holds_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, dict):
        return any(_holds_non_finite(v) for v in value.values())
    if isinstance(value, list):
        return any(_holds_non_finite(v) for v in value)
    return False


payload_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | finite_or_not
    | st.text(max_size=8)
    | st.sampled_from(["null", "\u00cb\u007f\u00f8", "\x7f\x7f"]),  # the probe's bytes in text
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@given(payload_values)
def test_a_payload_with_nulls_is_refused_exactly_when_a_float_in_it_is_not_finite(
    payload: Any,
) -> None:
    body = msgspec.json.encode(payload)
    if _holds_non_finite(payload):
        with pytest.raises(ValidationError, match="finite"):
            check_payload_numbers(payload)
        with pytest.raises(ValidationError, match="finite"):
            check_payload_numbers(payload, body)
    else:
        check_payload_numbers(payload)
        check_payload_numbers(payload, body)


async def test_the_memory_broker_never_hands_a_handler_null_for_nan() -> None:
    async with InMemoryBroker() as broker:
        publisher = broker.publisher(
            PublisherConfig(validate_payloads=False)
        )  # the encoder's check
        good = new({"amount": 1.5})
        smuggled = msgspec.structs.replace(good, payload={"amount": math.nan})
        with pytest.raises(ValidationError, match=r"payload\.amount"):
            await publisher.publish(smuggled)
        assert broker.stream_info("PAYMENT_INSTRUCTIONS").messages == 0


# -- 14: header values keep what they carry ------------------------------------------------


@pytest.mark.parametrize("value", [" padded", "padded ", "\tx", "x\t", "\x0bx", "x\x0c", " "])
def test_a_header_value_with_edge_whitespace_is_refused(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        new({}, headers={"X-Note": value})
    assert caught.value.field == "headers['X-Note']"
    assert "whitespace" in caught.value.reason


def test_inner_whitespace_and_an_empty_value_are_fine() -> None:
    headers = {"X-Note": "a  b\tc", "X-Empty": "", "X-Wide": "\u3000x\u3000"}
    assert dict(new({}, headers=headers).headers) == headers


def test_with_headers_refuses_edge_whitespace_too() -> None:
    with pytest.raises(ValidationError):
        new({}).with_headers({"X-Note": "trailing "})


header_text = st.text(
    st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"), max_size=12
)


def _nats_round_trip(message: Message) -> dict[str, str]:
    """The user headers after the NATS adapter's encoding and nats-py's header parse."""
    codec = BlockCodec()
    block = codec.encode_block(message)
    headers = Client._parse_header_lines(block.header_block[len(b"NATS/1.0\r\n") :])
    fast = codec.decode_block(block.subject, block.header_block, block.body)
    general = codec.decode(block.subject, headers, block.body)
    assert fast is None or fast == general
    return dict(general.headers)


@given(header_text)
def test_a_header_value_is_refused_or_arrives_exactly_on_both_adapters(value: str) -> None:
    try:
        message = new({}, headers={"X-Value": value})
    except ValidationError:
        assert value[:1] in " \t\x0b\x0c" or value[-1:] in " \t\x0b\x0c"
        return
    wire = WireCodec()
    assert dict(wire.decode(*wire.encode(message)).headers) == {"X-Value": value}
    assert _nats_round_trip(message) == {"X-Value": value}


# -- 15: typed, early errors ---------------------------------------------------------------


async def plain(message: Message) -> None:
    return None


class SyncHandle:
    def handle(self, message: Message) -> None:
        return None


class Handler:
    async def handle(self, message: Message) -> None:
        return None


@pytest.mark.parametrize("handler", [plain, SyncHandle(), object(), None, lambda m: None])
def test_check_handler_refuses_what_cannot_handle_naming_function_handler(handler: Any) -> None:
    with pytest.raises(TypeError) as caught:
        check_handler(handler)
    assert "FunctionHandler" in str(caught.value)


def test_check_handler_accepts_handlers() -> None:
    for handler in (Handler(), FunctionHandler(plain)):
        assert check_handler(handler) is handler


async def test_a_plain_function_fails_at_subscribe_and_nothing_is_consumed() -> None:
    async with InMemoryBroker() as broker:
        subscriber = broker.subscriber(MessageType.PAYMENT_INSTRUCTION)
        with pytest.raises(TypeError, match=r"FunctionHandler\(plain\)"):
            await subscriber.subscribe(plain)  # type: ignore[arg-type]
        await broker.publisher().publish(new(sample_payload(MessageType.PAYMENT_INSTRUCTION)))
        await broker.settle()
        assert await broker.dead_letters().list() == []


async def test_a_request_of_a_stream_backed_type_is_a_validation_error_in_memory() -> None:
    async with InMemoryBroker() as broker:
        with pytest.raises(ValidationError) as caught:
            await broker.publisher().request(
                new(sample_payload(MessageType.PAYMENT_INSTRUCTION)), timeout=1.0
            )
        assert caught.value.field == "message_type"
        assert "stream-backed" in caught.value.reason
        assert broker.stream_info("PAYMENT_INSTRUCTIONS").messages == 0


async def test_the_cli_refuses_a_request_of_a_stream_backed_type_before_starting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    try:
        argv = ["request", "PaymentInstruction", "corridor.USD-EUR", '{"amount": "1"}']
        code = await run_cli(argv, container=container)
        assert not container.memory_broker.initialized, "the bus was started"
    finally:
        await shutdown_container(container)
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "stream-backed" in err
    assert "RiskAssessment" in err
    assert len(err.splitlines()) == 1


# -- 6: the duplicate window against the retry budget --------------------------------------


def test_a_window_shorter_than_twice_the_publish_timeout_is_refused_naming_everything() -> None:
    config = PublisherConfig(publish_timeout=6.0)
    assert config.min_duplicate_window == 12.0
    config.check_duplicate_window("PAYMENT_INSTRUCTIONS", 12.0)
    with pytest.raises(DuplicateWindowError) as caught:
        config.check_duplicate_window("PAYMENT_INSTRUCTIONS", 0.5)
    error = caught.value
    assert isinstance(error, StreamError)
    assert isinstance(error, ValueError)
    assert (error.stream, error.duplicate_window, error.publish_timeout, error.required) == (
        "PAYMENT_INSTRUCTIONS",
        0.5,
        6.0,
        12.0,
    )
    for text in ("PAYMENT_INSTRUCTIONS", "0.5s", "6s", "12s"):
        assert text in str(error)


@pytest.mark.parametrize("window", [math.nan, math.inf])
def test_a_non_finite_window_is_refused(window: float) -> None:
    with pytest.raises(DuplicateWindowError):
        PublisherConfig().check_duplicate_window("CHECKPOINTS", window)


def test_settings_with_a_window_shorter_than_the_retry_budget_are_refused_at_load() -> None:
    environ = {"DELTRAN_DUPLICATE_WINDOW": "0.5", "DELTRAN_PUBLISH_TIMEOUT": "6"}
    with pytest.raises(ValidationError) as caught:
        load_settings(environ=environ)
    assert caught.value.field == "DELTRAN_DUPLICATE_WINDOW"
    assert caught.value.value == 0.5
    assert "publisher.publish_timeout" in caught.value.reason
    assert "DELTRAN_PUBLISH_TIMEOUT" in caught.value.reason


def test_a_config_file_with_both_keys_is_refused_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "bus.toml"
    path.write_text("[streams]\nduplicate_window = 8.0\n\n[publisher]\npublish_timeout = 6.0\n")
    with pytest.raises(ValidationError) as caught:
        load_settings(path, environ={})
    assert caught.value.field == f"streams.duplicate_window in {path}"
    assert f"publisher.publish_timeout in {path}" in caught.value.reason


def test_the_default_window_and_a_long_timeout_are_refused_naming_the_default() -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(environ={"DELTRAN_PUBLISH_TIMEOUT": "61"})
    assert caught.value.field == "streams.duplicate_window (default)"
    assert "DELTRAN_PUBLISH_TIMEOUT" in caught.value.reason


def test_a_window_of_exactly_twice_the_timeout_is_accepted() -> None:
    settings = load_settings(
        environ={"DELTRAN_DUPLICATE_WINDOW": "12", "DELTRAN_PUBLISH_TIMEOUT": "6"}
    )
    assert (settings.streams.duplicate_window, settings.publisher.publish_timeout) == (12.0, 6.0)


async def test_a_memory_container_starts_with_the_defaults() -> None:
    container = build_container(load_settings(environ={"DELTRAN_BACKEND": "memory"}))
    await start_container(container)
    await shutdown_container(container)


@pytest.mark.parametrize("delay", [*NON_FINITE, "1"])
def test_a_retryable_error_refuses_a_delay_that_cannot_be_scheduled(delay: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        RetryableError("ledger busy", delay=delay)
    assert caught.value.field == "delay"


async def test_a_handler_raising_a_non_finite_delay_is_naked_with_the_backoff() -> None:
    clock = ManualClock()
    attempts: list[int] = []

    async def busy(message: Message) -> None:
        attempts.append(current_delivery().attempt)
        if len(attempts) == 1:
            raise RetryableError("ledger busy", delay=math.inf)

    async with InMemoryBroker(clock=clock) as broker:
        config = SubscriberConfig(nak_initial_delay=2.0, ack_wait=30.0)
        await broker.subscriber(MessageType.PAYMENT_INSTRUCTION, config).subscribe(
            FunctionHandler(busy)
        )
        await broker.publisher().publish(new(sample_payload(MessageType.PAYMENT_INSTRUCTION)))
        await broker.settle()
        assert attempts == [1]
        clock.advance(2.0)
        await broker.settle()
        assert attempts == [1, 2]


@pytest.mark.parametrize("window", [math.nan, math.inf, 0.0, -1.0])
def test_the_memory_broker_refuses_a_window_that_is_not_a_finite_positive_number(
    window: float,
) -> None:
    with pytest.raises(ValidationError, match="duplicate_window"):
        InMemoryBroker(duplicate_window=window)


@given(st.floats())
def test_a_publish_timeout_from_the_environment_is_accepted_exactly_when_it_is_usable(
    value: float,
) -> None:
    """Finite, positive, and within the default 120 s duplicate window's budget (60 s)."""
    environ = {"DELTRAN_PUBLISH_TIMEOUT": repr(value)}
    if math.isfinite(value) and 0 < value <= 60:
        assert load_settings(environ=environ).publisher.publish_timeout == value
        return
    with pytest.raises(ValidationError) as caught:
        load_settings(environ=environ)
    assert caught.value.field in ("DELTRAN_PUBLISH_TIMEOUT", "streams.duplicate_window (default)")
