"""Ordered groups in memory: the group records, the stream reader and the dead-letter sink."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from message_bus.adapters.ordered.source import Record
from message_bus.adapters.ordered.store import (
    GroupSpec,
    MemberRecord,
    PartitionRecord,
    Snapshot,
    StoreConflict,
    Versioned,
    decode,
    encode,
    member_key,
    partition_key,
    spec_key,
)
from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import H_PARTITION_KEY, Encoded
from message_bus.domain.dead_letter import is_replay_subject, replay_subject, unwrap_replay
from message_bus.domain.errors import DecodeError, ValidationError
from message_bus.ports.config import StartPosition

from ._group import start_sequence
from ._host import ConsumerHost
from ._store import Stream


class KeyValues:
    """The broker's key-value records (as a NATS KV bucket): revisions grow across keys."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[int, bytes]] = {}
        self.revision = 0

    def put(self, key: str, value: bytes, expected: int | None = None) -> int:
        """Store ``value`` (if ``expected`` is given: only if the key is at that revision,
        0 = absent); return its revision.

        Raises:
            StoreConflict: the key is not at ``expected``.
        """
        if expected is not None:
            current = self.entries.get(key)
            if (current[0] if current is not None else 0) != expected:
                raise StoreConflict(key)
        self.revision += 1
        self.entries[key] = (self.revision, value)
        return self.revision

    def delete(self, key: str, expected: int | None = None) -> None:
        """Delete ``key`` (if ``expected`` is given: only at that revision)."""
        current = self.entries.get(key)
        if current is None or (expected is not None and current[0] != expected):
            return
        del self.entries[key]


class MemoryGroupStore:
    """One ordered group's records in the broker's :class:`KeyValues`."""

    def __init__(self, values: KeyValues, prefix: str, on_event: Callable[[], None]) -> None:
        self._values = values
        self._prefix = prefix
        self._on_event = on_event

    async def join(self, spec: GroupSpec) -> Versioned[GroupSpec]:
        key = spec_key(self._prefix)
        stored = self._values.entries.get(key)
        if stored is None:
            return Versioned(spec, self._values.put(key, encode(spec), 0))
        return Versioned(decode(GroupSpec, stored[1]), stored[0])

    async def replace_spec(self, spec: GroupSpec, revision: int) -> int:
        return self._values.put(spec_key(self._prefix), encode(spec), revision)

    async def heartbeat(self, member: str, record: MemberRecord) -> int:
        return self._values.put(member_key(self._prefix, member), encode(record))

    async def leave(self, member: str) -> None:
        self._values.delete(member_key(self._prefix, member))
        self._on_event()

    async def forget(self, member: str, revision: int) -> None:
        self._values.delete(member_key(self._prefix, member), revision)

    async def snapshot(self) -> Snapshot:
        members_at = member_key(self._prefix, "")
        partitions_at = partition_key(self._prefix, 0)[:-1]
        snapshot = Snapshot()
        for key, (revision, value) in self._values.entries.items():
            if key.startswith(members_at):
                snapshot.members[key[len(members_at) :]] = revision
            elif key.startswith(partitions_at):
                record = decode(PartitionRecord, value)
                snapshot.partitions[int(key[len(partitions_at) :])] = Versioned(record, revision)
        return snapshot

    async def write_partition(self, partition: int, record: PartitionRecord, revision: int) -> int:
        written = self._values.put(partition_key(self._prefix, partition), encode(record), revision)
        self._on_event()
        return written


class StreamWatch:
    """Wakes the readers of one stream when a message is stored."""

    def __init__(self) -> None:
        self.readers: set[Callable[[], None]] = set()

    def stored(self) -> None:
        for wake in list(self.readers):
            wake()


class MemoryCursor:
    """Reads one stream's log forward, keeping the group's subjects."""

    def __init__(
        self,
        stream: Stream,
        host: ConsumerHost,
        prefix: str,
        replay: str,
        start: int,
        watch: StreamWatch,
    ) -> None:
        self._stream = stream
        self._host = host
        self._prefix = prefix
        self._replay = replay
        self._next = max(start, 1)
        self._watch = watch
        self._event = asyncio.Event()
        self._notify: Callable[[], None] | None = None
        watch.readers.add(self._stored)

    def _stored(self) -> None:
        self._event.set()
        if self._notify is not None:
            self._notify()

    def _wanted(self, subject: str) -> bool:
        if is_replay_subject(subject):
            return subject == self._replay
        return subject.startswith(self._prefix)

    def notify(self, wake: Callable[[], None]) -> None:
        self._notify = wake

    def take(self, limit: int) -> list[Record]:
        stream = self._stream
        now = self._host.clock.now()
        if now >= stream.expires_at:
            stream.expire(now)
        while True:
            records: list[Record] = []
            for sequence, entry in stream.entries_from(self._next, limit):
                self._next = sequence + 1
                encoded = entry.encoded
                if self._wanted(encoded.subject):
                    records.append(self._record(sequence, entry.encoded))
            if records:
                self._host.activity.events += 1  # the reader has work: the broker is busy
                return records
            if self._next > stream.last_seq:
                return []

    async def read(self, limit: int) -> list[Record]:
        while True:
            self._event.clear()
            records = self.take(limit)
            if records:
                return records
            await self._event.wait()

    def _record(self, sequence: int, encoded: Encoded) -> Record:
        original = unwrap_replay(encoded)  # a replay copy is the message it carries
        key = original.headers.get(H_PARTITION_KEY)
        try:
            message = self._host.codec.decode(*original)
        except (DecodeError, ValidationError) as exc:
            return Record(sequence, encoded.subject, key, None, str(exc), encoded)
        return Record(sequence, encoded.subject, key, message, "", encoded)

    async def close(self) -> None:
        self._watch.readers.discard(self._stored)
        self._notify = None


class MemorySource:
    """One stream of the broker as one ordered group reads it."""

    def __init__(
        self,
        stream: Stream,
        message_type: MessageType,
        consumer: str,
        host: ConsumerHost,
        watch: StreamWatch,
    ) -> None:
        self._stream = stream
        self._prefix = f"{message_type.subject_prefix}."
        self._replay = replay_subject(stream.name, consumer)
        self._host = host
        self._watch = watch

    @property
    def stream(self) -> str:
        return self._stream.name

    async def generation(self) -> str:
        return "memory"  # a broker's streams live as long as it does

    async def start_floor(self, start: StartPosition) -> int:
        if start == "first":
            return 0
        return start_sequence(self._host.clock, self._stream, start) - 1

    async def open(self, start: int) -> MemoryCursor:
        return MemoryCursor(
            self._stream, self._host, self._prefix, self._replay, start, self._watch
        )


class MemoryDeadLetterSink:
    """Stores an ordered group's dead letters in the broker's dead-letter stream."""

    def __init__(self, host: ConsumerHost, stream: str, group: str, consumer: str) -> None:
        self._host = host
        self._stream = stream
        self._group = group
        self._consumer = consumer

    async def dead_letter(self, record: Record, deliveries: int, reason: str) -> None:
        original = record.raw
        assert isinstance(original, Encoded)
        self._host.store_dead_letter(
            original,
            reason=reason,
            stream=self._stream,
            sequence=record.sequence,
            deliveries=deliveries,
            consumer_group=self._group,
            consumer=self._consumer,
        )


__all__ = [
    "KeyValues",
    "MemoryCursor",
    "MemoryDeadLetterSink",
    "MemoryGroupStore",
    "MemorySource",
    "StreamWatch",
]
