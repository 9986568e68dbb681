"""Partition keys: where a message goes, validated so nothing can inject a subject token."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, ClassVar, TypeVar

import blake3

from .errors import ValidationError

MAX_PARTITIONS = 4096
DEFAULT_PARTITIONS = 32

CORRIDOR_PATTERN = r"[A-Z]{3}-[A-Z]{3}"
"""A corridor: a currency pair like ``USD-EUR`` (used for subjects and payload schemas)."""
BIC_PATTERN = r"[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}(?:[A-Z0-9]{3})?"
"""A BIC of 8 or 11 characters like ``BANKGB2L`` (used for subjects and payload schemas)."""
_CORRIDOR = re.compile(CORRIDOR_PATTERN)
_BIC = re.compile(BIC_PATTERN)
_U64 = 0xFFFFFFFFFFFFFFFF
_KEYS_MAX = 65536
"""Keys the factories remember (per kind); past it they start over."""


def _check_token(field: str, value: object, pattern: re.Pattern[str], what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(field, value, f"must be a str, got {type(value).__name__}")
    if pattern.fullmatch(value) is None:
        raise ValidationError(field, value, f"must be {what}")
    return value


def check_corridor(value: object, field: str = "corridor_id") -> str:
    """Return ``value`` if it is a corridor (currency pair like ``USD-EUR``), else raise."""
    return _check_token(
        field, value, _CORRIDOR, "a currency pair like 'USD-EUR' ([A-Z]{3}-[A-Z]{3})"
    )


def check_bic(value: object, field: str = "bank_id") -> str:
    """Return ``value`` if it is a BIC (8 or 11 characters like ``BANKGB2L``), else raise."""
    return _check_token(
        field, value, _BIC, "a BIC of 8 or 11 characters like 'BANKGB2L' or 'BANKGB2LXXX'"
    )


def check_partition_count(n: object) -> int:
    """Return ``n`` if it is a valid partition count (1..4096), else raise."""
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_PARTITIONS:
        raise ValidationError("partitions", n, f"must be an int in 1..{MAX_PARTITIONS}")
    return n


def jump_consistent_hash(key: int, buckets: int) -> int:
    """Lamping & Veach's jump consistent hash of a 64-bit ``key`` into ``0..buckets-1``.

    Growing ``buckets`` from n to m moves only about ``1 - n/m`` of the keys, and each
    moved key moves to one of the new buckets.
    """
    b, j = -1, 0
    while j < buckets:
        b = j
        key = (key * 2862933555777941757 + 1) & _U64
        j = int((b + 1) * (float(1 << 31) / float((key >> 33) + 1)))
    return b


def key_hash(canonical: str) -> int:
    """BLAKE3 of the canonical key (UTF-8), first 8 bytes as an unsigned little-endian int."""
    return int.from_bytes(blake3.blake3(canonical.encode()).digest(length=8), "little")


@lru_cache(maxsize=65536, typed=True)
def partition_of(canonical: str, partitions: int) -> int:
    """The partition (0..partitions-1) of a canonical key; cached, it repeats a lot."""
    return jump_consistent_hash(key_hash(canonical), check_partition_count(partitions))


@dataclass(frozen=True, slots=True)
class PartitionKey:
    """Where a message goes: a corridor, a bank, both, or everybody.

    Build keys with :meth:`corridor`, :meth:`bank`, :meth:`corridor_bank` or
    :meth:`broadcast`; every token is validated against an allow-list on construction.
    """

    kind: ClassVar[str] = ""

    @property
    def suffix(self) -> str:
        """The canonical key: the subject suffix, e.g. ``corridor.USD-EUR`` (each kind
        of key stores it, computed once when the key is built)."""
        raise NotImplementedError

    def partition_number(self, partitions: int = DEFAULT_PARTITIONS) -> int | None:
        """This key's partition in ``0..partitions-1``; None for :class:`Broadcast`.

        Raises:
            ValidationError: ``partitions`` is not in 1..4096.
        """
        return partition_of(self.suffix, partitions)

    @staticmethod
    def corridor(corridor_id: str) -> Corridor:
        """A key for one currency corridor, e.g. ``USD-EUR``.

        Keys are immutable, so a corridor seen before gets the key validated then (a
        dictionary lookup instead of a pattern match); the same holds for :meth:`bank`
        and :meth:`corridor_bank`.
        """
        if type(corridor_id) is str:  # not a subclass: it could compare like other text
            key = _corridors.get(corridor_id)
            if key is not None:
                return key
        return _remember(_corridors, corridor_id, Corridor(corridor_id))

    @staticmethod
    def bank(bank_id: str) -> Bank:
        """A key for one bank, by BIC, e.g. ``BANKGB2L``."""
        if type(bank_id) is str:
            key = _banks.get(bank_id)
            if key is not None:
                return key
        return _remember(_banks, bank_id, Bank(bank_id))

    @staticmethod
    def corridor_bank(*, corridor_id: str, bank_id: str) -> CorridorBank:
        """A key for one bank within one corridor."""
        pair = (corridor_id, bank_id)
        if type(corridor_id) is str and type(bank_id) is str:
            key = _corridor_banks.get(pair)
            if key is not None:
                return key
        return _remember(_corridor_banks, pair, CorridorBank(corridor_id, bank_id))

    @staticmethod
    def broadcast() -> Broadcast:
        """A key for messages meant for everybody; it has no partition number."""
        return Broadcast()

    @staticmethod
    def parse(suffix: str) -> PartitionKey:
        """Parse a canonical key (a subject suffix) back into a validated key.

        Raises:
            ValidationError: the text is not a canonical key.
        """
        parts = suffix.split(".") if isinstance(suffix, str) else []
        match parts:
            case ["broadcast"]:
                return Broadcast()
            case ["corridor", corridor_id]:
                return Corridor(corridor_id)
            case ["bank", bank_id]:
                return Bank(bank_id)
            case ["corridor", corridor_id, "bank", bank_id]:
                return CorridorBank(corridor_id, bank_id)
        raise ValidationError(
            "partition_key",
            suffix,
            "must be 'broadcast', 'corridor.<pair>', 'bank.<BIC>' or 'corridor.<pair>.bank.<BIC>'",
        )


@dataclass(frozen=True, slots=True)
class Corridor(PartitionKey):
    """A currency corridor such as ``USD-EUR``."""

    corridor_id: str
    suffix: str = field(init=False, repr=False, compare=False, default="")
    kind: ClassVar[str] = "corridor"

    def __post_init__(self) -> None:
        check_corridor(self.corridor_id)
        object.__setattr__(self, "suffix", f"corridor.{self.corridor_id}")


@dataclass(frozen=True, slots=True)
class Bank(PartitionKey):
    """A bank identified by its BIC."""

    bank_id: str
    suffix: str = field(init=False, repr=False, compare=False, default="")
    kind: ClassVar[str] = "bank"

    def __post_init__(self) -> None:
        check_bic(self.bank_id)
        object.__setattr__(self, "suffix", f"bank.{self.bank_id}")


@dataclass(frozen=True, slots=True)
class CorridorBank(PartitionKey):
    """One bank within one corridor."""

    corridor_id: str
    bank_id: str
    suffix: str = field(init=False, repr=False, compare=False, default="")
    kind: ClassVar[str] = "corridor_bank"

    def __post_init__(self) -> None:
        check_corridor(self.corridor_id)
        check_bic(self.bank_id)
        object.__setattr__(self, "suffix", f"corridor.{self.corridor_id}.bank.{self.bank_id}")


@dataclass(frozen=True, slots=True)
class Broadcast(PartitionKey):
    """Everybody: no partition."""

    suffix: str = field(init=False, repr=False, compare=False, default="")
    kind: ClassVar[str] = "broadcast"

    def __post_init__(self) -> None:
        object.__setattr__(self, "suffix", "broadcast")

    def partition_number(self, partitions: int = DEFAULT_PARTITIONS) -> int | None:
        check_partition_count(partitions)
        return None


_K = TypeVar("_K", bound=PartitionKey)
_corridors: dict[str, Corridor] = {}
_banks: dict[str, Bank] = {}
_corridor_banks: dict[tuple[str, str], CorridorBank] = {}


def _remember(cache: dict[Any, _K], token: Any, key: _K) -> _K:
    """Remember ``key`` (validated) as the key of ``token``; start over past ``_KEYS_MAX``.

    Only exact ``str`` tokens are remembered (and looked up): a subclass could hash and
    compare like a different text.
    """
    tokens = token if type(token) is tuple else (token,)
    if all(type(t) is str for t in tokens):
        if len(cache) >= _KEYS_MAX:
            cache.clear()
        cache[token] = key
    return key
