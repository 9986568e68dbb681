"""What ``deltran-bus`` prints and how it reads its arguments, one function at a time."""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime

import pytest

from message_bus import Message, MessageType
from message_bus.app.cli.arguments import comma_list, header, parse_message_type, seconds
from message_bus.app.cli.output import (
    catalog_table,
    dead_letter_table,
    message_json,
    receipt_line,
)
from message_bus.domain.catalog import StreamSpec
from message_bus.domain.dead_letter import DeadLetter
from message_bus.domain.partition import PartitionKey
from message_bus.ports import PublishReceipt

CHECKPOINT = Message.new(MessageType.CHECKPOINT, PartitionKey.broadcast(), {"height": 7})


@pytest.mark.parametrize(
    "text",
    ["PaymentInstruction", "PAYMENT_INSTRUCTION", "payment-instruction", "payment.instruction"],
)
def test_a_message_type_is_accepted_in_each_of_its_spellings(text: str) -> None:
    assert parse_message_type(text) is MessageType.PAYMENT_INSTRUCTION


@pytest.mark.parametrize("text", ["0", "-1", "nan", "inf", "soon"])
def test_seconds_must_be_a_finite_positive_number(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        seconds(text)


def test_a_comma_list_drops_blanks_and_spaces() -> None:
    assert comma_list(" USD-EUR, ,GBP-USD,") == ("USD-EUR", "GBP-USD")


def test_a_header_value_may_be_empty_but_its_name_may_not() -> None:
    assert header("x-trace=") == ("x-trace", "")
    with pytest.raises(argparse.ArgumentTypeError):
        header("=value")


def test_a_receipt_line_says_where_the_message_went() -> None:
    stored = PublishReceipt("m-1", "deltran.a", "CHECKPOINTS", 3, duplicate=True, partition=2)
    core = PublishReceipt("m-2", "deltran.b")

    assert receipt_line(stored) == (
        "published m-1 to deltran.a: stream CHECKPOINTS seq 3 partition 2"
        " (duplicate: already stored, nothing new)"
    )
    assert receipt_line(core) == "published m-2 to deltran.b: core (no stream)"


def test_message_json_has_optional_fields_only_when_set() -> None:
    plain = json.loads(message_json(CHECKPOINT))
    delivered = json.loads(message_json(CHECKPOINT, attempt=2))

    assert list(plain) == ["id", "type", "subject", "partition", "created_at", "payload"]
    assert plain["payload"] == {"height": 7}
    assert delivered["attempt"] == 2


def test_a_dead_letter_table_has_one_aligned_row_per_letter() -> None:
    letter = DeadLetter(
        message=CHECKPOINT,
        reason="invalid checkpoint",
        subject="deltran.consensus.checkpoint.broadcast",
        stream="CHECKPOINTS",
        sequence=4,
        deliveries=5,
        consumer_group="ops",
        failed_at=datetime(2024, 5, 1, 12, 30, tzinfo=UTC),
    )

    header_line, row = dead_letter_table([letter]).splitlines()

    assert header_line.split() == [
        "SEQ", "TYPE", "SUBJECT", "FROM", "DELIVERIES", "GROUP", "FAILED", "REPLAYED", "REASON"
    ]  # fmt: skip
    assert row.startswith("-    Checkpoint  deltran.consensus.checkpoint.broadcast  CHECKPOINTS#4")
    assert row.index("2024-05-01 12:30:00") == header_line.index("FAILED")
    assert row.endswith("invalid checkpoint")


def test_a_stream_kept_forever_says_so() -> None:
    table = catalog_table([StreamSpec("A", ("x.>",), 0), StreamSpec("B", ("y.>", "z.>"), 86400)])

    assert table.splitlines()[1:] == ["A       x.>       forever", "B       y.>,z.>   1d"]
