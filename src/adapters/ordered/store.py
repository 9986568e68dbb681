"""Where an ordered group keeps its positions, leases and members: the group store seam.

The NATS adapter implements :class:`GroupStore` on the ``DELTRAN_ORDERED`` KV bucket, the
in-memory adapter in its broker; the ordered consumer (:mod:`.member`) uses nothing else.
Records are small JSON documents (msgspec); every partition write is a compare-and-set
on the revision the writer last saw, which is what fences a member that lost a partition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

import msgspec

T = TypeVar("T")
S = TypeVar("S", bound=msgspec.Struct)

BUCKET = "DELTRAN_ORDERED"
"""The KV bucket (NATS) that holds every ordered group's records."""


class GroupSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What every member of an ordered group must agree on.

    Attributes:
        partitions: the group's partition count.
        generation: the stream incarnation the positions belong to (its creation time).
        start: where the group started (``SubscriberConfig.start_token``); a spec
            stored before start positions existed reads as ``first``.
        floor: the position a partition without a record of this generation starts
            at (the stream sequence before the group's start position, when the group
            was created; 0 on a stream re-created since).
    """

    partitions: int
    generation: str
    start: str = "first"
    floor: int = 0


class PartitionRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One partition of an ordered group: its owner and its position.

    Attributes:
        owner: the member id that owns it, "" if none.
        floor: the stream sequence of the partition's last message that is done (ACKed
            or dead-lettered); 0 if none.
        generation: the stream incarnation ``floor`` counts in.
        failing: the sequence of the partition's next message if its deliveries failed
            (0 if none), and ``failures`` how many times, so ``max_deliver`` holds across
            owners.
        failures: see ``failing``.
    """

    owner: str = ""
    floor: int = 0
    generation: str = ""
    failing: int = 0
    failures: int = 0


class MemberRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A live member's heartbeat.

    Attributes:
        started: when the member joined (RFC 3339 UTC), for operators.
        beats: heartbeats so far (so every heartbeat changes the value).
    """

    started: str
    beats: int = 0


@dataclass(frozen=True, slots=True)
class Versioned(Generic[T]):
    """A record with the revision it was stored under (compare-and-set token)."""

    value: T
    revision: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The group's keys at one moment.

    Attributes:
        members: member id -> revision of its heartbeat.
        partitions: partition -> its record (absent: never written).
    """

    members: dict[str, int] = field(default_factory=dict)
    partitions: dict[int, Versioned[PartitionRecord]] = field(default_factory=dict)


class StoreConflict(Exception):
    """A compare-and-set failed: the record changed since the revision given."""


class StoreUnavailable(Exception):
    """The store could not be reached or did not answer in time; try again later."""


class GroupStore(Protocol):
    """The records of one ordered group (one stream, one consumer name).

    Every method may raise :class:`StoreUnavailable`; writes with an expected revision
    raise :class:`StoreConflict` when it no longer matches.
    """

    async def join(self, spec: GroupSpec) -> Versioned[GroupSpec]:
        """Create the group's spec if it has none; return the stored one (maybe older)."""
        ...

    async def replace_spec(self, spec: GroupSpec, revision: int) -> int:
        """Overwrite the spec stored under ``revision``; return the new revision."""
        ...

    async def heartbeat(self, member: str, record: MemberRecord) -> int:
        """Write the member's heartbeat; return its revision."""
        ...

    async def leave(self, member: str) -> None:
        """Delete the member's heartbeat (it left)."""
        ...

    async def forget(self, member: str, revision: int) -> None:
        """Delete a dead member's heartbeat if it is still at ``revision``."""
        ...

    async def snapshot(self) -> Snapshot:
        """Read every member heartbeat and partition record of the group."""
        ...

    async def write_partition(self, partition: int, record: PartitionRecord, revision: int) -> int:
        """Write ``partition``'s record if it is at ``revision`` (0: if it has none);
        return the new revision."""
        ...


def encode(record: msgspec.Struct) -> bytes:
    """A record as stored."""
    return msgspec.json.encode(record)


_decoders: dict[type, msgspec.json.Decoder[object]] = {}


def decode(kind: type[S], data: bytes) -> S:
    """A stored record of type ``kind``.

    Raises:
        msgspec.DecodeError: not such a record.
    """
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder.decode(data)  # type: ignore[return-value]


def group_prefix(stream: str, consumer: str) -> str:
    """The key prefix of one group's records: ``{stream}.{consumer}``."""
    return f"{stream}.{consumer}"


def spec_key(prefix: str) -> str:
    """The key of a group's spec."""
    return f"{prefix}.group"


def member_key(prefix: str, member: str) -> str:
    """The key of a member's heartbeat."""
    return f"{prefix}.member.{member}"


def partition_key(prefix: str, partition: int) -> str:
    """The key of a partition's record."""
    return f"{prefix}.partition.{partition}"


__all__ = [
    "BUCKET",
    "GroupSpec",
    "GroupStore",
    "MemberRecord",
    "PartitionRecord",
    "Snapshot",
    "StoreConflict",
    "StoreUnavailable",
    "Versioned",
    "decode",
    "encode",
    "group_prefix",
    "member_key",
    "partition_key",
    "spec_key",
]
