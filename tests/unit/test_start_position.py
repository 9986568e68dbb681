"""A new group's start position: validation, its canonical token, settings, and the
in-memory broker's groups."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus import (
    FunctionHandler,
    Message,
    MessageType,
    PartitionKey,
    StartPositionConflict,
    SubscriberConfig,
    ValidationError,
)
from message_bus.adapters.memory import InMemoryBroker, ManualClock
from message_bus.app.config import load_settings
from message_bus.ports.config import check_start_position, start_token
from message_bus.testing.samples import sample_payload

PAYMENT = MessageType.PAYMENT_INSTRUCTION
KEY = PartitionKey.corridor("USD-EUR")


def test_first_is_the_default_start() -> None:
    assert SubscriberConfig().start == "first"
    assert SubscriberConfig().start_token == "first"


@given(
    st.datetimes(
        min_value=datetime(1970, 1, 2),
        max_value=datetime(9000, 1, 1),
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
    )
)
def test_a_start_time_is_kept_in_utc_and_its_token_round_trips(when: datetime) -> None:
    config = SubscriberConfig(start=when)

    assert isinstance(config.start, datetime)
    assert config.start == when
    assert config.start.utcoffset() == timedelta(0)
    token = config.start_token
    assert token.startswith("time:")
    assert token.endswith("Z")
    assert check_start_position(token.removeprefix("time:")) == when
    assert start_token(when) == token


@given(st.text(max_size=30).filter(lambda s: s not in ("first", "new")))
def test_other_text_is_refused_naming_the_field_and_value(text: str) -> None:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        parsed = None
    if parsed is not None and parsed.tzinfo is not None:
        return  # an RFC 3339 time with an offset is a start position
    with pytest.raises(ValidationError) as refused:
        SubscriberConfig(start=text)  # type: ignore[arg-type]
    assert (refused.value.field, refused.value.value) == ("start", text)


@pytest.mark.parametrize("bad", [datetime(2026, 1, 1), "2026-01-01T00:00:00", 0, None, "FIRST"])
def test_a_naive_time_or_another_value_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError) as refused:
        SubscriberConfig(start=bad)  # type: ignore[arg-type]
    assert refused.value.field == "start"


def test_the_start_is_a_setting_in_toml_and_the_environment(tmp_path: Path) -> None:
    file = tmp_path / "bus.toml"
    file.write_text("[subscriber]\nstart = 2026-11-29T21:00:00Z\n", encoding="utf-8")
    when = datetime(2026, 11, 29, 21, 0, tzinfo=UTC)

    from_toml = load_settings(file, environ={})
    from_env = load_settings(environ={"DELTRAN_START": "2026-11-29T22:00:00+01:00"})
    new = load_settings(environ={"DELTRAN_START": "new"})

    assert from_toml.subscriber.start == when
    assert from_env.subscriber.start == when
    assert new.subscriber.start == "new"
    assert from_toml.to_dict()["subscriber"]["start"] == "2026-11-29T21:00:00Z"
    with pytest.raises(ValidationError):
        load_settings(environ={"DELTRAN_START": "yesterday"})


async def _group(broker: InMemoryBroker, start: object, seen: list[str]) -> None:
    config = SubscriberConfig(consumer_group="g", partition_key=KEY, start=start)  # type: ignore[arg-type]

    async def handle(message: Message) -> None:
        seen.append(message.payload["payment_id"])  # type: ignore[index]

    await broker.subscriber(PAYMENT, config).subscribe(FunctionHandler(handle))


async def test_a_memory_group_starting_at_a_time_takes_the_first_message_stored_at_it() -> None:
    clock = ManualClock(datetime(2026, 11, 29, 12, 0, tzinfo=UTC))
    broker = InMemoryBroker(clock=clock)
    publisher = broker.publisher()
    for n in range(3):
        await publisher.publish(
            Message.new(PAYMENT, KEY, sample_payload(PAYMENT, payment_id=f"pay-{n}"))
        )
        clock.advance(60)
    seen: list[str] = []

    await _group(broker, datetime(2026, 11, 29, 12, 1, tzinfo=UTC), seen)
    await broker.settle()

    assert seen == ["pay-1", "pay-2"]
    await broker.close()


async def test_a_memory_group_refuses_a_member_with_another_start() -> None:
    broker = InMemoryBroker(clock=ManualClock())
    await _group(broker, "new", [])

    with pytest.raises(StartPositionConflict) as refused:
        await _group(broker, "first", [])
    assert (refused.value.field, refused.value.value, refused.value.expected) == (
        "start",
        "first",
        "new",
    )
    await broker.close()
