"""Partition keys: validation by allow-list, canonical form, BLAKE3 + jump hash."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
from pathlib import Path

import blake3
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import routed_keys

from message_bus import Bank, Broadcast, Corridor, CorridorBank, PartitionKey, ValidationError
from message_bus.domain import partition
from message_bus.domain.partition import jump_consistent_hash, key_hash

VECTORS = json.loads((Path(__file__).parents[2] / "docs" / "partition-vectors.json").read_text())


@pytest.mark.parametrize(
    "bad",
    [
        "USD.EUR",
        "usd-eur",
        "USD EUR",
        "*",
        ">",
        "",
        "USD-EUR\r\n",
        "USD-EUR\n",
        "USD\x00EUR",
        "ÜSD-EUR",
        "USD-EU",
        "USD-EURO",
        "USD-EUR.>",
        "USD--EUR",
    ],
)
def test_a_corridor_that_is_not_a_currency_pair_is_rejected_naming_field_and_value(
    bad: str,
) -> None:
    with pytest.raises(ValidationError) as caught:
        PartitionKey.corridor(bad)
    assert caught.value.field == "corridor_id"
    assert caught.value.value == bad
    assert "corridor_id" in str(caught.value)
    assert repr(bad) in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    "bad",
    [
        "BANKGB2",
        "BANKGB2LXXXX",
        "BANKGB2LXX",
        "bankgb2l",
        "BANK.GB2L",
        "BANKGB2*",
        "BANKGB2>",
        "",
        "BANKGB2L\r\n",
        "BANKGB2L\x00",
        "BANKGB2 L",
        "BÄNKGB2L",
        "1ANKGB2L",
    ],
)
def test_a_bank_id_that_is_not_a_bic_is_rejected(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PartitionKey.bank(bad)
    assert caught.value.field == "bank_id"
    assert caught.value.value == bad


def test_corridor_bank_validates_both_tokens() -> None:
    with pytest.raises(ValidationError, match="bank_id"):
        PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="bad.bank")
    with pytest.raises(ValidationError, match="corridor_id"):
        PartitionKey.corridor_bank(corridor_id="USD>EUR", bank_id="BANKGB2L")


def test_a_non_string_token_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must be a str"):
        PartitionKey.corridor(123)  # type: ignore[arg-type]


def test_keys_have_the_canonical_subject_suffixes() -> None:
    assert PartitionKey.corridor("USD-EUR").suffix == "corridor.USD-EUR"
    assert PartitionKey.bank("BANKGB2L").suffix == "bank.BANKGB2L"
    assert PartitionKey.bank("BANKGB2LXXX").suffix == "bank.BANKGB2LXXX"
    key = PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id="BANKGB2L")
    assert key.suffix == "corridor.USD-EUR.bank.BANKGB2L"
    assert PartitionKey.broadcast().suffix == "broadcast"
    assert isinstance(key, CorridorBank)
    assert isinstance(PartitionKey.broadcast(), Broadcast)


def test_a_key_seen_before_is_the_one_validated_then_and_a_bad_one_is_still_refused() -> None:
    first = PartitionKey.corridor("GBP-JPY")
    assert PartitionKey.corridor("GBP-JPY") is first
    assert PartitionKey.bank("BANKGB2L") is PartitionKey.bank("BANKGB2L")
    pair = PartitionKey.corridor_bank(corridor_id="GBP-JPY", bank_id="BANKGB2L")
    assert PartitionKey.corridor_bank(corridor_id="GBP-JPY", bank_id="BANKGB2L") is pair
    assert first == Corridor("GBP-JPY")
    assert hash(first) == hash(Corridor("GBP-JPY"))
    for _ in range(2):  # a refused token is never remembered
        with pytest.raises(ValidationError, match="corridor_id"):
            PartitionKey.corridor("GBP.JPY")
        with pytest.raises(ValidationError, match="must be a str"):
            PartitionKey.corridor(["GBP-JPY"])  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="bank_id"):
            PartitionKey.corridor_bank(corridor_id="GBP-JPY", bank_id="BANK>")


def test_a_str_subclass_token_gives_a_key_of_plain_text_and_is_not_remembered() -> None:
    class Shouty(str):
        def __hash__(self) -> int:
            return hash("USD-CAD")

        def __eq__(self, other: object) -> bool:
            return True

    assert PartitionKey.corridor("USD-CAD").suffix == "corridor.USD-CAD"
    assert PartitionKey.corridor(Shouty("AUD-NZD")).suffix == "corridor.AUD-NZD"
    assert PartitionKey.corridor("USD-CAD").suffix == "corridor.USD-CAD"


def test_a_key_rebuilt_by_pickle_copy_replace_or_convert_has_its_own_suffix() -> None:
    key = PartitionKey.corridor_bank(corridor_id="GBP-USD", bank_id="BANKGB2L")
    assert pickle.loads(pickle.dumps(key)).suffix == key.suffix
    assert copy.deepcopy(key).suffix == key.suffix
    assert dataclasses.replace(key, bank_id="DEUTDEFF").suffix == "corridor.GBP-USD.bank.DEUTDEFF"
    converted = msgspec.convert({"corridor_id": "GBP-USD", "suffix": "broadcast"}, Corridor)
    assert converted.suffix == "corridor.GBP-USD"  # computed from the tokens, never taken
    assert pickle.loads(pickle.dumps(PartitionKey.broadcast())).suffix == "broadcast"


def test_the_remembered_keys_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(partition, "_KEYS_MAX", 4)
    monkeypatch.setattr(partition, "_corridors", {})
    for i in range(10):
        PartitionKey.corridor(f"A{chr(65 + i)}A-EUR")
        assert len(partition._corridors) <= 4


@given(routed_keys)
def test_parsing_a_canonical_key_gives_the_same_key(key: PartitionKey) -> None:
    assert PartitionKey.parse(key.suffix) == key


@given(st.text(max_size=40))
def test_parsing_arbitrary_text_yields_a_valid_key_or_a_validation_error(text: str) -> None:
    try:
        key = PartitionKey.parse(text)
    except ValidationError as exc:
        assert exc.field in {"partition_key", "corridor_id", "bank_id"}  # noqa: PT017
    else:
        assert key.suffix == text
        assert not set(text) & {"*", ">", " ", "\r", "\n", "\x00"}


def test_partition_numbers_match_the_published_test_vectors() -> None:
    for entry in VECTORS["vectors"]:
        key = PartitionKey.parse(entry["key"])
        for n, expected in entry["partitions"].items():
            assert key.partition_number(int(n)) == expected, (entry["key"], n)
        if entry["blake3_u64_le"] is not None:
            assert blake3.blake3(entry["key"].encode()).hexdigest() == entry["blake3_hex"]
            assert key_hash(entry["key"]) == int(entry["blake3_u64_le"])


def test_jump_hash_matches_the_reference_implementation() -> None:
    for case in VECTORS["jump_consistent_hash"]:
        assert jump_consistent_hash(int(case["key"]), case["buckets"]) == case["bucket"]


def test_broadcast_has_no_partition_number() -> None:
    assert PartitionKey.broadcast().partition_number(32) is None


@pytest.mark.parametrize("bad", [0, -1, 4097, 1.5, "32", True, None])
def test_partition_count_outside_1_to_4096_is_rejected(bad: object) -> None:
    with pytest.raises(ValidationError) as caught:
        PartitionKey.corridor("USD-EUR").partition_number(bad)  # type: ignore[arg-type]
    assert caught.value.field == "partitions"
    with pytest.raises(ValidationError):
        PartitionKey.broadcast().partition_number(bad)  # type: ignore[arg-type]


@given(routed_keys, st.integers(min_value=1, max_value=4096))
def test_partition_number_is_in_range_and_stable(key: PartitionKey, n: int) -> None:
    number = key.partition_number(n)
    assert number is not None
    assert 0 <= number < n
    assert key.partition_number(n) == number


def _many_keys(count: int) -> list[PartitionKey]:
    banks = [
        f"{b}{c}2L"
        for b in ("BANK", "DEUT", "CHAS", "BNPA")
        for c in ("GB", "DE", "FR", "US", "JP")
    ]
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    result: list[PartitionKey] = []
    i = 0
    while len(result) < count:
        corridor = f"{letters[i % 26]}{letters[i // 26 % 26]}{letters[i // 676 % 26]}-EUR"
        result.append(
            PartitionKey.corridor_bank(corridor_id=corridor, bank_id=banks[i % len(banks)])
        )
        i += 1
    return result


def test_growing_from_32_to_64_partitions_moves_about_half_the_keys_and_only_to_new_ones() -> None:
    keys_ = _many_keys(10_000)
    moved = 0
    for key in keys_:
        before, after = key.partition_number(32), key.partition_number(64)
        assert before is not None
        assert after is not None
        if before != after:
            moved += 1
            assert after >= 32, "a key moved between two old partitions"
    assert 4_500 <= moved <= 5_500


def test_keys_spread_evenly_over_32_partitions() -> None:
    counts = [0] * 32
    for key in _many_keys(10_000):
        number = key.partition_number(32)
        assert number is not None
        counts[number] += 1
    assert min(counts) > 10_000 / 32 * 0.75
    assert max(counts) < 10_000 / 32 * 1.25


@settings(max_examples=200)
@given(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=1, max_value=1000))
def test_jump_hash_moves_keys_only_to_the_new_bucket(key: int, n: int) -> None:
    before, after = jump_consistent_hash(key, n), jump_consistent_hash(key, n + 1)
    assert 0 <= before < n
    assert after in (before, n)


def test_key_classes_are_exported() -> None:
    assert isinstance(PartitionKey.corridor("USD-EUR"), Corridor)
    assert isinstance(PartitionKey.bank("BANKGB2L"), Bank)
