"""Reads the state of every consumer group on a NATS server: durable consumers and ordered groups.

Read-only: nothing is created (the ordered groups' bucket is read only if it exists).
nats-py errors are mapped to the bus's own: ``BusConnectionError`` when JetStream does
not answer, ``StreamError`` when it refuses.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import msgspec
from nats.js.api import ConsumerInfo, StreamInfo

from message_bus.adapters.ordered.store import BUCKET, GroupSpec, StoreUnavailable, decode, spec_key
from message_bus.domain.errors import BusConnectionError, ValidationError
from message_bus.domain.partition import PartitionKey
from message_bus.ports.config import EPHEMERAL_CONSUMER_PREFIX

from .client import NatsClient
from .group_store import KvGroupStore
from .jsapi import call_jetstream, list_consumers
from .ordered_bucket import BUCKET_STREAM, BUCKET_SUBJECT_PREFIX
from .streams import StreamError

T = TypeVar("T")

MAX_KEY_SUBJECTS = 512
"""Subjects of one stream whose newest message is read to find a partition's newest
message; a stream with more distinct subjects shows no per-partition lag."""
_PARALLEL_GETS = 16
"""Consumers per page of JetStream's consumer list."""


@dataclass(frozen=True, slots=True)
class ConsumerStatus:
    """One durable (or ephemeral) consumer of a stream, as JetStream reports it.

    Attributes:
        stream: the stream it reads.
        name: the consumer name.
        pending: stored messages matching its filter not yet delivered (``num_pending``).
        ack_pending: delivered, not yet acknowledged.
        redelivered: messages delivered more than once and not yet acknowledged.
        lag: the stream's last sequence minus the consumer's ack floor.
        last_active: when a message was last delivered or acknowledged; None if never.
        waiting: pull requests waiting (members asking for messages now).
        ephemeral: its name is an ephemeral reader's (``ephemeral-*``).
    """

    stream: str
    name: str
    pending: int
    ack_pending: int
    redelivered: int
    lag: int
    last_active: dt.datetime | None
    waiting: int
    ephemeral: bool


@dataclass(frozen=True, slots=True)
class PartitionStatus:
    """One partition of an ordered group.

    Attributes:
        partition: its number.
        owner: the member that owns it, "" if none.
        floor: the stream sequence of its last message that is done (0 if none).
        lag: stream sequences from ``floor`` to the partition's newest stored message
            (0: caught up); None if not known (too many subjects to read).
        failures: failed deliveries of its next message.
    """

    partition: int
    owner: str
    floor: int
    lag: int | None
    failures: int


@dataclass(frozen=True, slots=True)
class OrderedGroupStatus:
    """An ordered group: its members and who owns which partition.

    Attributes:
        stream: the stream it reads.
        name: the group's consumer name.
        partitions: the group's partition count (0 if its spec is unreadable).
        members: the member ids with a heartbeat key, sorted.
        records: every partition, in order (never-written ones with no owner, floor 0).
    """

    stream: str
    name: str
    partitions: int
    members: tuple[str, ...]
    records: tuple[PartitionStatus, ...]

    def owned(self) -> dict[str, int]:
        """Member id -> partitions it owns (members that own none included)."""
        counts = dict.fromkeys(self.members, 0)
        for record in self.records:
            if record.owner:
                counts[record.owner] = counts.get(record.owner, 0) + 1
        return counts


@dataclass(frozen=True, slots=True)
class GroupsStatus:
    """Every group on the server at one moment.

    Attributes:
        at: when it was read (UTC).
        consumers: the consumers, by stream then name.
        ordered: the ordered groups, by stream then name.
        stream_last: each stream's last sequence.
    """

    at: dt.datetime
    consumers: tuple[ConsumerStatus, ...] = ()
    ordered: tuple[OrderedGroupStatus, ...] = ()
    stream_last: dict[str, int] = field(default_factory=dict)


async def read_groups(client: NatsClient, *, timeout: float = 10.0) -> GroupsStatus:
    """The state of every consumer and ordered group on the server ``client`` is connected to.

    Raises:
        BusConnectionError: JetStream did not answer within ``timeout``.
        StreamError: JetStream refused a request.
    """
    try:
        async with asyncio.timeout(timeout):
            return await _read(client)
    except TimeoutError as exc:
        raise BusConnectionError(f"JetStream did not answer within {timeout:g}s") from exc


async def _read(client: NatsClient) -> GroupsStatus:
    js = client.jetstream
    streams: list[StreamInfo] = []
    while True:
        page: list[StreamInfo] = await _call("*", lambda: js.streams_info(len(streams)))
        if not page:
            break
        streams.extend(page)
    at = dt.datetime.now(dt.UTC)
    by_name = {s.config.name: s for s in streams if s.config.name}
    last = {name: int(s.state.last_seq) for name, s in by_name.items()}
    consumers: list[ConsumerStatus] = []
    for name in sorted(by_name):
        if name == BUCKET_STREAM:
            continue
        infos = await list_consumers(client, name)
        consumers.extend(_consumer(info, last[name]) for info in infos)
    consumers.sort(key=lambda c: (c.stream, c.name))
    ordered: list[OrderedGroupStatus] = []
    if BUCKET_STREAM in by_name:
        for stream, consumer in await _ordered_groups(client):
            if stream in by_name:
                ordered.append(await _ordered(client, by_name[stream], consumer))
    return GroupsStatus(at, tuple(consumers), tuple(ordered), last)


def _consumer(info: ConsumerInfo, stream_last: int) -> ConsumerStatus:
    floor = info.ack_floor.stream_seq if info.ack_floor is not None else 0
    times = [
        s.last_active
        for s in (info.delivered, info.ack_floor)
        if s is not None and s.last_active is not None
    ]
    return ConsumerStatus(
        stream=info.stream_name,
        name=info.name,
        pending=int(info.num_pending or 0),
        ack_pending=int(info.num_ack_pending or 0),
        redelivered=int(info.num_redelivered or 0),
        lag=max(0, stream_last - floor),
        last_active=max(times) if times else None,
        waiting=int(info.num_waiting or 0),
        ephemeral=info.name.startswith(EPHEMERAL_CONSUMER_PREFIX),
    )


async def _ordered_groups(client: NatsClient) -> list[tuple[str, str]]:
    """(stream, consumer) of every ordered group with a spec key in the bucket."""
    pattern = f"{BUCKET_SUBJECT_PREFIX}*.*.group"
    info: StreamInfo = await _call(
        BUCKET_STREAM, lambda: client.jetstream.stream_info(BUCKET_STREAM, subjects_filter=pattern)
    )
    groups = []
    for subject in info.state.subjects or {}:
        stream, consumer, _ = subject[len(BUCKET_SUBJECT_PREFIX) :].split(".")
        groups.append((stream, consumer))
    return sorted(groups)


async def _ordered(client: NatsClient, stream: StreamInfo, consumer: str) -> OrderedGroupStatus:
    name = str(stream.config.name)
    store = KvGroupStore(client, name, consumer)
    snapshot = await _call(BUCKET_STREAM, store.snapshot)
    partitions = await _spec_partitions(client, name, consumer)
    newest = await _newest_by_partition(client, stream, partitions)
    records = []
    for p in range(max(partitions, max(snapshot.partitions, default=-1) + 1)):
        versioned = snapshot.partitions.get(p)
        owner, floor, failures = "", 0, 0
        if versioned is not None:
            owner, floor, failures = (
                versioned.value.owner,
                versioned.value.floor,
                versioned.value.failures,
            )
        lag = None if newest is None else max(0, newest.get(p, 0) - floor)
        records.append(PartitionStatus(p, owner, floor, lag, failures))
    return OrderedGroupStatus(
        name, consumer, partitions, tuple(sorted(snapshot.members)), tuple(records)
    )


async def _spec_partitions(client: NatsClient, stream: str, consumer: str) -> int:
    subject = f"{BUCKET_SUBJECT_PREFIX}{spec_key(f'{stream}.{consumer}')}"
    try:
        raw = await _call(
            BUCKET_STREAM, lambda: client.jetstream.get_msg(BUCKET_STREAM, subject=subject)
        )
    except StreamError:
        return 0
    try:
        return decode(GroupSpec, raw.data or b"").partitions
    except msgspec.DecodeError:
        return 0


async def _newest_by_partition(
    client: NatsClient, stream: StreamInfo, partitions: int
) -> dict[int, int] | None:
    """Partition -> the stream sequence of its newest stored message; None if the
    stream has more than :data:`MAX_KEY_SUBJECTS` subjects (or no partition count)."""
    if partitions <= 0:
        return None
    name = str(stream.config.name)
    js = client.jetstream
    info: StreamInfo = await _call(name, lambda: js.stream_info(name, subjects_filter=">"))
    subjects = info.state.subjects or {}
    if len(subjects) > MAX_KEY_SUBJECTS:
        return None
    prefixes = [s[:-1] for s in stream.config.subjects or [] if s.endswith(".>")]
    keyed: dict[str, int] = {}
    for subject in subjects:
        for prefix in prefixes:
            if subject.startswith(prefix):
                try:
                    key = PartitionKey.parse(subject[len(prefix) :])
                except ValidationError:
                    continue
                number = key.partition_number(partitions)
                keyed[subject] = 0 if number is None else number
                break
    limit = asyncio.Semaphore(_PARALLEL_GETS)

    async def newest(subject: str) -> int:
        async with limit:
            try:
                msg = await _call(name, lambda: js.get_msg(name, subject=subject))
            except StreamError:  # expired or purged since the subjects were listed
                return 0
            return int(msg.seq or 0)

    sequences = await asyncio.gather(*(newest(s) for s in keyed))
    result: dict[int, int] = {}
    for (_, number), seq in zip(keyed.items(), sequences, strict=True):
        result[number] = max(result.get(number, 0), seq)
    return result


async def _call(name: str, call: Callable[[], Awaitable[T]]) -> T:
    try:
        return await call_jetstream(name, call)
    except StoreUnavailable as exc:
        raise BusConnectionError(f"bucket {BUCKET}: {exc}") from exc


__all__ = [
    "MAX_KEY_SUBJECTS",
    "ConsumerStatus",
    "GroupsStatus",
    "OrderedGroupStatus",
    "PartitionStatus",
    "read_groups",
]
