"""Sample payloads: each call hands out a payload of its own, nested fields included."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from message_bus import MessageType
from message_bus.testing.samples import sample_payload

BUILTINS = [t for t in MessageType if t.is_builtin]


def _mutate(value: Any) -> None:
    """Change every list and dict inside ``value`` in place."""
    if isinstance(value, dict):
        for item in list(value.values()):
            _mutate(item)
        value["mutated-by-a-test"] = "x"
    elif isinstance(value, list):
        for item in value:
            _mutate(item)
        value.append("mutated-by-a-test")


@pytest.mark.parametrize("message_type", BUILTINS, ids=lambda t: t.value)
def test_changing_a_sample_in_place_leaves_the_next_sample_as_it_was(
    message_type: MessageType,
) -> None:
    before = copy.deepcopy(sample_payload(message_type))
    changed = sample_payload(message_type)
    _mutate(changed)
    assert sample_payload(message_type) == before


def test_a_nested_list_of_one_sample_is_not_the_list_of_another() -> None:
    first = sample_payload(MessageType.NETTING_PROPOSAL)
    second = sample_payload(MessageType.NETTING_PROPOSAL)
    assert first["payment_ids"] is not second["payment_ids"]
    assert first["positions"] is not second["positions"]
