"""``groups ls`` without a server: its table, JSON, ages, options and the memory backend."""

from __future__ import annotations

import datetime as dt
import json
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus.adapters.nats.group_status import (
    ConsumerStatus,
    GroupsStatus,
    OrderedGroupStatus,
    PartitionStatus,
)
from message_bus.app.cli import build_parser, run_cli
from message_bus.app.cli.groups import ago, groups_json, groups_text, visible

NOW = dt.datetime(2026, 11, 29, 12, 0, 0, tzinfo=dt.UTC)


def consumer(name: str, **fields: object) -> ConsumerStatus:
    values: dict[str, object] = {
        "stream": "PAYMENT_INSTRUCTIONS",
        "name": name,
        "pending": 5,
        "ack_pending": 3,
        "redelivered": 1,
        "lag": 8,
        "last_active": NOW - dt.timedelta(seconds=75),
        "waiting": 1,
        "ephemeral": name.startswith("ephemeral-"),
    }
    values.update(fields)
    return ConsumerStatus(**values)  # type: ignore[arg-type]


ORDERED = OrderedGroupStatus(
    stream="PAYMENT_INSTRUCTIONS",
    name="deltran-consumer__netting",
    partitions=4,
    members=("m-a", "m-b"),
    records=(
        PartitionStatus(0, "m-a", 10, 0, 0),
        PartitionStatus(1, "m-b", 12, 3, 2),
        PartitionStatus(2, "m-a", 0, None, 0),
        PartitionStatus(3, "m-gone", 7, 1, 0),
    ),
)
STATUS = GroupsStatus(
    NOW,
    (consumer("deltran-consumer__screening"), consumer("ephemeral-00ff", last_active=None)),
    (ORDERED,),
    {"PAYMENT_INSTRUCTIONS": 20},
)


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.2, "now"),
        (1, "1s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (7200, "2h"),
        (86400 * 3, "3d"),
    ],
)
def test_ages_are_shown_in_their_largest_unit(seconds: float, shown: str) -> None:
    assert ago(NOW - dt.timedelta(seconds=seconds), NOW) == shown


def test_a_consumer_that_never_delivered_shows_never() -> None:
    assert ago(None, NOW) == "never"


@given(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False))
def test_any_age_is_one_short_token(seconds: float) -> None:
    shown = ago(NOW - dt.timedelta(seconds=seconds), NOW)

    assert re.fullmatch(r"now|\d+[smhd]", shown), shown


def test_the_table_has_one_row_per_consumer_with_its_numbers() -> None:
    text = groups_text(visible(STATUS, show_ephemeral=True))
    lines = text.splitlines()

    assert lines[0].split() == [
        "STREAM", "CONSUMER", "PENDING", "ACK", "PENDING", "REDELIVERED", "LAG", "WAITING",
        "LAST", "ACTIVE",
    ]  # fmt: skip
    assert lines[1].split() == [
        "PAYMENT_INSTRUCTIONS", "deltran-consumer__screening", "5", "3", "1", "8", "1", "1m",
    ]  # fmt: skip
    assert lines[2].split()[1:] == ["ephemeral-00ff", "5", "3", "1", "8", "1", "never"]
    assert lines[0].index("PENDING") == lines[1].index("5")  # columns are aligned


def test_ephemeral_readers_are_hidden_by_default() -> None:
    text = groups_text(visible(STATUS, show_ephemeral=False))

    assert "deltran-consumer__screening" in text
    assert "ephemeral-00ff" not in text


def test_an_ordered_group_shows_members_their_partitions_and_each_partition() -> None:
    text = groups_text(STATUS)
    lines = text.splitlines()

    assert (
        "ordered group PAYMENT_INSTRUCTIONS deltran-consumer__netting: 4 partitions, "
        "2 member(s), 0 unowned, lag ?"
    ) in lines
    assert ["m-a", "2"] in [line.split() for line in lines]
    assert ["m-b", "1"] in [line.split() for line in lines]
    assert ["m-gone", "1", "no", "heartbeat", "key", "(gone)"] in [line.split() for line in lines]
    assert ["1", "m-b", "12", "3", "2"] in [line.split() for line in lines]
    assert ["2", "m-a", "0", "?", "0"] in [line.split() for line in lines]


def test_a_group_with_known_lags_sums_them() -> None:
    records = tuple(PartitionStatus(p, "", 0, p, 0) for p in range(4))
    group = OrderedGroupStatus("S", "c", 4, (), records)

    text = groups_text(GroupsStatus(NOW, (), (group,)))

    assert "ordered group S c: 4 partitions, 0 member(s), 4 unowned, lag 6" in text
    assert "no members" in text
    assert text.startswith("no consumer groups")


def test_the_json_has_every_number_and_the_idle_time_in_seconds() -> None:
    document = json.loads(groups_json(STATUS))

    assert document["at"] == "2026-11-29T12:00:00+00:00"
    screening, ephemeral = document["consumers"]
    assert screening == {
        "stream": "PAYMENT_INSTRUCTIONS",
        "consumer": "deltran-consumer__screening",
        "pending": 5,
        "ack_pending": 3,
        "redelivered": 1,
        "lag": 8,
        "waiting": 1,
        "last_active": "2026-11-29T11:58:45+00:00",
        "idle_seconds": 75.0,
        "ephemeral": False,
    }
    assert ephemeral["last_active"] is None
    assert ephemeral["idle_seconds"] is None
    [ordered] = document["ordered"]
    assert ordered["members"] == [
        {"member": "m-a", "partitions": 2, "registered": True},
        {"member": "m-b", "partitions": 1, "registered": True},
        {"member": "m-gone", "partitions": 1, "registered": False},
    ]
    assert ordered["records"][2] == {
        "partition": 2,
        "owner": "m-a",
        "floor": 0,
        "lag": None,
        "failures": 0,
    }


def test_watch_defaults_to_two_seconds_and_refuses_zero(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()

    assert parser.parse_args(["groups", "ls", "--watch"]).watch == 2.0
    assert parser.parse_args(["groups", "ls"]).watch is None
    assert parser.parse_args(["groups", "ls", "--watch", "0.5", "--count", "3"]).count == 3
    with pytest.raises(SystemExit) as exited:
        parser.parse_args(["groups", "ls", "--watch", "0"])
    assert exited.value.code == 2
    assert "--watch: '0' must be > 0 seconds" in capsys.readouterr().err


async def test_the_memory_backend_says_it_needs_a_nats_server(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("DELTRAN_BACKEND", "DELTRAN_CONFIG"):
        monkeypatch.delenv(name, raising=False)

    code = await run_cli(["groups", "ls", "--backend", "memory"])

    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("deltran-bus groups: error: groups ls needs a NATS server")
    assert len(err.strip().splitlines()) == 1
