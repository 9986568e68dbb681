"""Consumer names: one name per (durable name, group, partition filter), and back."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import keys

from message_bus import PartitionKey, SubscriberConfig, ValidationError

NAME_ALPHABET = "abAB09-_"
names = st.text(NAME_ALPHABET, min_size=1, max_size=64)
SOME_FILTERS = (
    None,
    PartitionKey.corridor("USD-EUR"),
    PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L"),
)
filters = st.none() | keys


def config_or_none(durable: str, group: str, key: PartitionKey | None) -> SubscriberConfig | None:
    try:
        return SubscriberConfig(durable_name=durable, consumer_group=group, partition_key=key)
    except ValidationError:
        return None


def parse(name: str) -> tuple[str, str, str | None]:
    """The inverse of ``consumer_name``: (durable name, group, partition suffix)."""
    parts = name.split("__")
    assert len(parts) in (2, 3), name
    durable, group = parts[0], parts[1]
    suffix = parts[2].replace("_", ".") if len(parts) == 3 else None
    return durable, group, suffix


@given(names, names, filters)
def test_every_valid_consumer_name_parses_back_to_its_durable_name_group_and_filter(
    durable: str, group: str, key: PartitionKey | None
) -> None:
    config = config_or_none(durable, group, key)
    if config is None:
        return
    assert parse(config.consumer_name) == (durable, group, key.suffix if key else None)


def test_no_two_groups_of_short_underscore_names_share_a_consumer_name() -> None:
    # Every name of up to 4 characters of "a" and "_", with and without filters: the
    # places where a separator could hide in a name, exhaustively.
    short = ["".join(p) for n in range(1, 5) for p in itertools.product("a_", repeat=n)]
    owners: dict[str, tuple[str, str, str | None]] = {}
    for durable, group, key in itertools.product(short, short, SOME_FILTERS):
        config = config_or_none(durable, group, key)
        if config is None:
            continue
        owner = (durable, group, key.suffix if key else None)
        assert owners.setdefault(config.consumer_name, owner) == owner


@pytest.mark.parametrize(
    ("durable", "group", "field", "value"),
    [
        ("x__y", "z", "durable_name", "x__y"),
        ("x", "y__z", "consumer_group", "y__z"),
        ("d", "g__corridor_USD-EUR", "consumer_group", "g__corridor_USD-EUR"),
        ("x_", "y", "durable_name", "x_"),
        ("x", "_y", "consumer_group", "_y"),
        ("_x", "y", "durable_name", "_x"),
        ("x", "y_", "consumer_group", "y_"),
    ],
)
def test_a_name_that_could_run_into_the_separator_is_refused_naming_field_and_value(
    durable: str, group: str, field: str, value: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        SubscriberConfig(durable_name=durable, consumer_group=group)
    assert caught.value.field == field
    assert caught.value.value == value
    assert "__" in str(caught.value)


def test_the_names_that_collided_before_are_now_told_apart_or_refused() -> None:
    # x__y + z and x + y__z both joined to x__y__z; now neither half may hold "__".
    for durable, group in (("x__y", "z"), ("x", "y__z")):
        assert config_or_none(durable, group, None) is None
    filtered = SubscriberConfig(
        durable_name="d", consumer_group="g", partition_key=PartitionKey.corridor("USD-EUR")
    )
    assert config_or_none("d", "g__corridor_USD-EUR", None) is None
    assert filtered.consumer_name == "d__g__corridor_USD-EUR"


@pytest.mark.parametrize(
    ("durable", "group", "key", "name"),
    [
        ("deltran-consumer", "deltran-workers", None, "deltran-consumer__deltran-workers"),
        ("demo", "netting", None, "demo__netting"),
        ("my_app", "net_ting", None, "my_app__net_ting"),
        (
            "d",
            "g",
            PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L"),
            "d__g__corridor_USD-EUR_bank_BANKGB2L",
        ),
    ],
)
def test_ordinary_names_keep_the_consumer_name_they_always_had(
    durable: str, group: str, key: PartitionKey | None, name: str
) -> None:
    # A restarted group must find its consumer again.
    config = SubscriberConfig(durable_name=durable, consumer_group=group, partition_key=key)
    assert config.consumer_name == name
