"""Stream limits: settings, the catalog, the JetStream config they make, and the memory broker."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from nats.js.api import DiscardPolicy, StorageType

from message_bus import FunctionHandler, PermanentError, SubscriberConfig
from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.adapters.nats import StreamManager
from message_bus.adapters.nats.streams import StreamSummary
from message_bus.app.cli.output import catalog_table, stream_table
from message_bus.app.config import load_settings, stream_catalog_from
from message_bus.app.containers import open_container
from message_bus.domain.catalog import MessageType, StreamCatalog, StreamLimits
from message_bus.domain.errors import PublishBatchError, PublishError, ValidationError
from message_bus.domain.message import Message
from message_bus.domain.partition import PartitionKey
from message_bus.ports.config import PublisherConfig
from message_bus.testing.samples import sample_payload

PI = MessageType.PAYMENT_INSTRUCTION
KEY = PartitionKey.corridor(corridor_id="USD-EUR")


def _message(n: int = 0, **changes: object) -> Message:
    return Message.new(PI, KEY, sample_payload(PI, **changes), headers={"n": str(n)})


# -- the domain's limits -------------------------------------------------------------


def test_a_bounded_stream_refuses_new_messages_unless_told_to_drop_the_oldest() -> None:
    assert StreamLimits().discard_policy == "old"  # nothing can fill it: nothing is dropped
    assert StreamLimits(max_msgs=10).discard_policy == "new"
    assert StreamLimits(max_bytes=10).discard_policy == "new"
    assert StreamLimits(max_msg_size=10).discard_policy == "old"  # fills nothing
    assert StreamLimits(max_msgs=10, discard="old").discard_policy == "old"


@given(
    field=st.sampled_from(["max_msgs", "max_bytes", "max_msg_size"]),
    value=st.one_of(
        st.integers(max_value=0), st.booleans(), st.floats(), st.text(max_size=5), st.none()
    ),
)
def test_a_limit_must_be_a_positive_integer_or_none(field: str, value: object) -> None:
    if value is None:
        assert getattr(StreamLimits(**{field: value}), field) is None  # type: ignore[arg-type]
        return
    with pytest.raises(ValidationError) as caught:
        StreamLimits(**{field: value})  # type: ignore[arg-type]
    assert caught.value.field == field
    assert caught.value.value == value or value != value  # NaN


@given(st.integers(min_value=1, max_value=2**62))
def test_any_positive_integer_is_a_limit(value: int) -> None:
    assert StreamLimits(max_msgs=value, max_bytes=value).max_msgs == value


@pytest.mark.parametrize(
    ("field", "value"),
    [("storage", "disk"), ("discard", "oldest"), ("replicas", 0), ("replicas", 6)],
)
def test_a_bad_storage_discard_or_replica_count_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        StreamLimits(**{field: value})  # type: ignore[arg-type]
    assert (caught.value.field, caught.value.value) == (field, value)


def test_per_stream_limits_win_over_the_defaults_and_must_name_a_stream() -> None:
    catalog = StreamCatalog.default().with_limits(
        StreamLimits(max_msgs=1000, max_bytes=10_000_000),
        {"PAYMENT_INSTRUCTIONS": StreamLimits(max_msgs=10, discard="old", replicas=3)},
    )
    payments = catalog.streams[PI].limits
    assert (payments.max_msgs, payments.max_bytes) == (10, 10_000_000)
    assert (payments.discard_policy, payments.replicas) == ("old", 3)
    netting = catalog.streams[MessageType.NETTING_PROPOSAL].limits
    assert (netting.max_msgs, netting.discard_policy, netting.replicas) == (1000, "new", None)
    with pytest.raises(ValidationError) as caught:
        StreamCatalog.default().with_limits(None, {"PAYMENTS": StreamLimits(max_msgs=1)})
    assert (caught.value.field, caught.value.value) == ("streams.limits", "PAYMENTS")


# -- settings ----------------------------------------------------------------------------


def test_limits_come_from_the_toml_defaults_and_per_stream_tables(tmp_path: Path) -> None:
    path = tmp_path / "bus.toml"
    path.write_text(
        "[streams]\nmax_bytes = 1000000\n"
        "[streams.limits.PAYMENT_INSTRUCTIONS]\nmax_msgs = 5\n"
        '[streams.limits.DEAD_LETTERS]\ndiscard = "old"\nmax_msgs = 100\n'
    )
    settings = load_settings(path, environ={"DELTRAN_STREAM_MAX_MSG_SIZE": "65536"})
    catalog = stream_catalog_from(settings.to_dict()["streams"])
    payments = catalog.streams[PI].limits
    assert (payments.max_msgs, payments.max_bytes, payments.max_msg_size) == (5, 1000000, 65536)
    assert payments.discard_policy == "new"
    assert catalog.dead_letters.limits.discard_policy == "old"
    assert catalog.dead_letters.limits.max_msgs == 100
    plain = settings.to_dict()
    assert plain["streams"]["limits"]["PAYMENT_INSTRUCTIONS"] == {"max_msgs": 5}
    again = load_settings(environ={}, overrides={"streams.limits": plain["streams"]["limits"]})
    assert again.streams.limits == settings.streams.limits


@pytest.mark.parametrize(
    ("table", "where", "value"),
    [
        ("max_msgs = 0", "streams.limits.CHECKPOINTS.max_msgs in", 0),
        ('max_msgs = "10"', "streams.limits.CHECKPOINTS.max_msgs in", "10"),
        ('discard = "drop"', "streams.limits.CHECKPOINTS.discard in", "drop"),
        ("max_msg = 10", "streams.limits.CHECKPOINTS.max_msg in", 10),
    ],
)
def test_a_bad_per_stream_limit_names_its_table_key_and_file(
    tmp_path: Path, table: str, where: str, value: object
) -> None:
    path = tmp_path / "bus.toml"
    path.write_text(f"[streams.limits.CHECKPOINTS]\n{table}\n")
    with pytest.raises(ValidationError) as caught:
        load_settings(path, environ={})
    assert caught.value.field == f"{where} {path}"
    assert caught.value.value == value


@pytest.mark.parametrize(
    ("variable", "text"),
    [
        ("DELTRAN_STREAM_MAX_MSGS", "0"),
        ("DELTRAN_STREAM_MAX_BYTES", "-5"),
        ("DELTRAN_STREAM_DISCARD", "oldest"),
        ("DELTRAN_STREAM_STORAGE", "disk"),
    ],
)
def test_a_bad_default_limit_names_its_variable(variable: str, text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(environ={variable: text})
    assert caught.value.field == variable


# -- the JetStream config ----------------------------------------------------------------


def test_the_stream_config_carries_the_limits_and_the_discard_policy() -> None:
    catalog = StreamCatalog.default().with_limits(
        StreamLimits(max_msgs=100, max_bytes=5000, max_msg_size=900, storage="memory", replicas=3)
    )
    manager = StreamManager(None)  # type: ignore[arg-type]  # desired() does no I/O
    config = manager.desired(catalog.streams[PI], replicas=1, duplicate_window=120)
    assert (config.max_msgs, config.max_bytes, config.max_msg_size) == (100, 5000, 900)
    assert config.discard is DiscardPolicy.NEW
    assert config.storage is StorageType.MEMORY
    assert config.num_replicas == 3  # the stream's own count wins over the deployment's
    plain = manager.desired(StreamCatalog.default().streams[PI], 1, 120)
    assert (plain.max_msgs, plain.max_bytes, plain.max_msg_size) == (-1, -1, -1)
    assert plain.discard is DiscardPolicy.OLD
    assert plain.storage is StorageType.FILE


# -- the memory broker -------------------------------------------------------------------


def _broker(limits: StreamLimits) -> InMemoryBroker:
    catalog = StreamCatalog.default().with_limits(None, {"PAYMENT_INSTRUCTIONS": limits})
    return InMemoryBroker(clock=ManualClock(), catalog=catalog)


async def test_memory_stream_full_by_bytes_refuses_and_keeps_what_it_had() -> None:
    broker = _broker(StreamLimits(max_bytes=2500))
    publisher = broker.publisher(PublisherConfig())
    stored, refusal = 0, None
    for n in range(100):
        try:
            await publisher.publish(_message(n))
        except PublishError as exc:
            refusal = exc
            break
        stored += 1
    assert refusal is not None, "100 messages fit in 2500 bytes"
    assert refusal.reason == "stream_full"
    assert 0 < stored < 100
    assert len(broker._streams["PAYMENT_INSTRUCTIONS"]) == stored
    await broker.close()


async def test_memory_stream_by_bytes_with_discard_old_drops_the_oldest() -> None:
    broker = _broker(StreamLimits(max_bytes=2500, discard="old"))
    publisher = broker.publisher(PublisherConfig())
    receipts = [await publisher.publish(_message(n)) for n in range(50)]
    stream = broker._streams["PAYMENT_INSTRUCTIONS"]
    assert stream.last_seq == receipts[-1].sequence
    assert 0 < len(stream) < 50
    assert stream.bytes <= 2500
    await broker.close()


async def test_memory_message_bigger_than_max_msg_size_is_too_large_and_batches_go_on() -> None:
    broker = _broker(StreamLimits(max_msg_size=2000))
    publisher = broker.publisher(PublisherConfig())
    big = _message(0, reference="x" * 3000)
    with pytest.raises(PublishBatchError) as caught:
        await publisher.publish_many([_message(1), big, _message(2)])
    first, refused, last = caught.value.results
    assert isinstance(refused, PublishError)
    assert refused.reason == "message_too_large"
    assert not isinstance(first, PublishError)
    assert not isinstance(last, PublishError)
    assert (first.sequence, last.sequence) == (1, 2)
    await broker.close()


async def test_the_settings_limits_reach_the_memory_backend() -> None:
    settings = load_settings(environ={"DELTRAN_BACKEND": "memory", "DELTRAN_STREAM_MAX_MSGS": "2"})
    async with open_container(settings) as container:
        publisher = await container.publisher()
        await publisher.publish(_message(0))
        await publisher.publish(_message(1))
        with pytest.raises(PublishError) as caught:
            await publisher.publish(_message(2))
        assert caught.value.reason == "stream_full"
        assert not caught.value.retryable


async def test_memory_keeps_a_message_its_full_dead_letter_stream_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    catalog = StreamCatalog.default().with_limits(None, {"DEAD_LETTERS": StreamLimits(max_msgs=1)})
    clock = ManualClock()
    broker = InMemoryBroker(clock=clock, catalog=catalog)
    seen: list[str] = []

    async def refuse(message: Message) -> None:
        seen.append(message.id)
        raise PermanentError("poison")

    config = SubscriberConfig(consumer_group="limits", ack_wait=5.0)
    await broker.subscriber(PI, config).subscribe(FunctionHandler(refuse))
    first, second = _message(0), _message(1)
    publisher = broker.publisher(PublisherConfig())
    await publisher.publish(first)
    await publisher.publish(second)
    await broker.settle()
    letters = await broker.dead_letters().list()
    assert [d.message.id for d in letters if d.message is not None] == [first.id]
    assert seen.count(second.id) == 1
    clock.advance(5.0)
    await broker.settle()
    assert seen.count(second.id) == 2, "the message DEAD_LETTERS refused was dropped"
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], "a full DEAD_LETTERS is a warning and a retry, not a failure"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("not dead-lettered (stream_full)" in w for w in warnings), warnings
    await broker.close()


def test_the_tables_show_limits_only_when_a_stream_has_some() -> None:
    plain = catalog_table(StreamCatalog.default().all_streams())
    assert "LIMITS" not in plain
    limited = _payments_catalog(StreamLimits(max_msgs=10)).all_streams()
    lines = catalog_table(limited).splitlines()
    assert lines[0].endswith("LIMITS")
    assert lines[1].startswith("PAYMENT_INSTRUCTIONS")
    assert lines[1].endswith("max_msgs=10, discard=new")
    summary = StreamSummary("A", ("a.>",), 0, 0, 0, 0, 0, 1, 0.0, 120.0, "file", "limits")
    assert "DISCARD" not in stream_table([summary])
    bounded = dataclasses.replace(summary, max_msgs=10, discard="new")
    lines = stream_table([bounded]).splitlines()
    assert lines[0].endswith("MAX MSGS  MAX BYTES  MAX MSG SIZE  DISCARD")
    assert lines[1].split()[-4:] == ["10", "-", "-", "new"]


def _payments_catalog(limits: StreamLimits) -> StreamCatalog:
    return StreamCatalog.default().with_limits(None, {"PAYMENT_INSTRUCTIONS": limits})
