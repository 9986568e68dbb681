"""The NATS parts of ordered groups refuse bad input before any I/O, naming the field:
KV key tokens (stream, consumer, member), revisions, partitions, reader settings."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus import MessageType, ValidationError
from message_bus.adapters.nats import JetStreamSource, KvGroupStore, NatsClient
from message_bus.adapters.ordered.store import MemberRecord, PartitionRecord

TOKEN = re.compile(r"[A-Za-z0-9_=-]+")
PAYMENT = MessageType.PAYMENT_INSTRUCTION
not_a_token = st.text(max_size=12).filter(lambda t: TOKEN.fullmatch(t) is None)
a_token = st.from_regex(TOKEN, fullmatch=True)


def never_connected() -> NatsClient:
    return NatsClient()  # any I/O would raise "not connected", not ValidationError


@given(not_a_token)
def test_a_store_refuses_a_stream_or_consumer_that_is_not_one_key_token(name: str) -> None:
    for field, args in (("stream", (name, "group")), ("consumer", ("STREAM", name))):
        with pytest.raises(ValidationError) as caught:
            KvGroupStore(never_connected(), *args)
        assert caught.value.field == field
        assert caught.value.value == name


@given(a_token, a_token)
def test_a_store_takes_any_key_tokens(stream: str, consumer: str) -> None:
    store = KvGroupStore(never_connected(), stream, consumer)
    assert store.prefix == f"{stream}.{consumer}"


@given(not_a_token)
async def test_a_member_id_that_is_not_one_key_token_is_refused(member: str) -> None:
    store = KvGroupStore(never_connected(), "STREAM", "group")
    with pytest.raises(ValidationError, match="member"):
        await store.heartbeat(member, MemberRecord(started="t"))
    with pytest.raises(ValidationError, match="member"):
        await store.forget(member, 1)
    with pytest.raises(ValidationError, match="member"):
        await store.leave(member)


@given(st.one_of(st.integers(max_value=-1), st.booleans(), st.floats(), st.text()))
async def test_revisions_and_partitions_must_be_ints_from_zero(bad: object) -> None:
    store = KvGroupStore(never_connected(), "STREAM", "group")
    with pytest.raises(ValidationError, match="revision"):
        await store.write_partition(0, PartitionRecord(), bad)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="partition"):
        await store.write_partition(bad, PartitionRecord(), 0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="revision"):
        await store.forget("m1", bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("replicas", {"replicas": 0}),
        ("replicas", {"replicas": True}),
        ("timeout", {"timeout": 0}),
        ("timeout", {"timeout": float("nan")}),
    ],
)
def test_a_store_refuses_bad_settings(field: str, options: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as caught:
        KvGroupStore(never_connected(), "STREAM", "group", **options)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("field", "options"),
    [
        ("batch", {"batch": 0}),
        ("batch", {"batch": 1.5}),
        ("inactive_threshold", {"inactive_threshold": float("inf")}),
        ("inactive_threshold", {"inactive_threshold": 5.0}),  # not above pull_expires
        ("idle_heartbeat", {"idle_heartbeat": 6.0}),  # more than half of pull_expires
        ("pull_expires", {"pull_expires": -1.0}),
    ],
)
def test_a_source_refuses_bad_settings(field: str, options: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as caught:
        JetStreamSource(never_connected(), "STREAM", PAYMENT, "group", **options)  # type: ignore[arg-type]
    assert caught.value.field == field


@given(not_a_token.filter(lambda t: "." in t or t in ("", "*", ">") or " " in t))
def test_a_source_refuses_a_consumer_that_is_not_one_subject_token(consumer: str) -> None:
    with pytest.raises(ValidationError, match="consumer"):
        JetStreamSource(never_connected(), "STREAM", PAYMENT, consumer)


@given(st.one_of(st.integers(max_value=0), st.booleans(), st.floats()))
async def test_a_source_refuses_a_start_below_one(start: object) -> None:
    source = JetStreamSource(never_connected(), "STREAM", PAYMENT, "group")
    with pytest.raises(ValidationError, match="start"):
        await source.open(start)  # type: ignore[arg-type]
