"""Consumer management: find, create or repair the group's durable pull consumer."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Awaitable
from datetime import datetime
from typing import TypeVar

import nats.errors
import nats.js.errors
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    ConsumerInfo,
    DeliverPolicy,
    ReplayPolicy,
    StreamInfo,
)

from message_bus.domain.catalog import MessageType
from message_bus.domain.dead_letter import replay_subject
from message_bus.domain.errors import (
    BusConnectionError,
    MessageBusError,
    StartPositionConflict,
    ValidationError,
)
from message_bus.ports.config import StartPosition, SubscriberConfig, ephemeral_consumer_name

from ..client import NatsClient
from ..streams import StreamError

log = logging.getLogger("message_bus.nats.subscriber")

DEFAULT_INACTIVE_THRESHOLD = 60.0
"""Seconds without pull requests after which the server deletes an ephemeral consumer
whose reader died without deleting it."""
_STREAM_NOT_FOUND = 10059
_CONSUMER_EXISTS = 10148
_JS_API = "$JS.API"
"""The JetStream API prefix of :attr:`NatsClient.jetstream` (no domain)."""

START_METADATA = "deltran.start"
"""The consumer metadata key that records where the group started (``first``, ``new``,
``time:<RFC 3339>``); a consumer without it predates start positions: ``first``."""

T = TypeVar("T")


def start_policy(start: StartPosition) -> dict[str, object]:
    """The ``ConsumerConfig`` fields of a new group's start position."""
    if isinstance(start, datetime):
        return {"deliver_policy": DeliverPolicy.BY_START_TIME, "opt_start_time": start}
    if start == "new":
        return {"deliver_policy": DeliverPolicy.NEW}
    return {"deliver_policy": DeliverPolicy.ALL}


def _metadata(have: ConsumerConfig, start: str) -> dict[str, str]:
    """An existing consumer's metadata with the group's start position; the keys the
    server maintains itself (``_nats.*``) are left to it."""
    kept = {k: v for k, v in (have.metadata or {}).items() if not k.startswith("_nats")}
    return {**kept, START_METADATA: start}


def recorded_start(config: ConsumerConfig) -> str:
    """The start position a consumer records in its metadata (``first`` if none)."""
    return (config.metadata or {}).get(START_METADATA, "first")


def _seconds(value: float | None) -> float:
    return round(float(value or 0.0), 6)


async def _within(call: Awaitable[T], timeout: float | None) -> T:
    return await (call if timeout is None else asyncio.wait_for(call, timeout))


def _filters(config: ConsumerConfig) -> list[str]:
    """Every filter subject of ``config`` (one, or several), sorted."""
    one = [config.filter_subject] if config.filter_subject else []
    return sorted([*one, *(config.filter_subjects or [])])


class ConsumerBinding:
    """Finds or creates the group's durable pull consumer (or a reader's ephemeral one).

    ``ack_floor`` is the highest stream sequence below which the group acknowledged
    everything, as JetStream last reported it (at bind and on every :meth:`refresh`).
    A consumer that disappears under running subscriptions (deleted, or lost by the
    server) is re-created from just after that floor, never from the start of the
    stream nor from the group's start position (a group that started from "new" must
    not skip what was stored while its consumer was gone): deliveries acknowledged
    since the last report may be handled again, none is skipped. Unless the stream
    itself is a new one (deleted and applied again): its sequences start again at 1,
    so the floor of the old stream means nothing there.
    A stream with another creation time than the one the floor was counted on, or
    whose last sequence is below the floor, is a new stream: the consumer starts at
    its beginning, with one WARNING saying so.

    The consumer's filter is never changed: a consumer of the same name that filters
    other subjects belongs to someone else (a message type sharing the stream, an
    older naming), and binding to it raises :class:`ValidationError` instead. The one
    change made is to add the group's replay subject to a consumer created before
    replays had one (its own filter stays as it is).

    An ephemeral binding (``ephemeral=True``) creates a consumer of its own under a
    fresh name (:func:`ephemeral_consumer_name`), which no group can share: its deliveries and
    acknowledgements are nobody else's. The server deletes it after
    ``inactive_threshold`` seconds without pull requests; :meth:`delete` deletes it
    at once.

    A consumer created here starts where ``config.start`` says (deliver policy all,
    new or by start time) and records it in its metadata (:data:`START_METADATA`);
    binding to an existing consumer that records another start position raises
    :class:`StartPositionConflict`.

    ``generation`` counts the streams and consumers this binding has been bound to: it
    changes when the stream or the consumer turns out to be another one than before
    (re-created under the same name). Stream sequences and acknowledgements of one
    generation mean nothing in the next: a subscription forgets what it tracked by
    sequence when the generation changes.
    """

    def __init__(
        self,
        client: NatsClient,
        stream: str,
        config: SubscriberConfig,
        message_type: MessageType,
        *,
        ephemeral: bool = False,
        inactive_threshold: float = DEFAULT_INACTIVE_THRESHOLD,
    ) -> None:
        self.client = client
        self.stream = stream
        self.ephemeral = ephemeral
        self.name = ephemeral_consumer_name() if ephemeral else config.consumer_name
        key = config.partition_key
        filter_subject = f"{message_type.subject_prefix}.{key.suffix if key else '>'}"
        self.filter_subject = filter_subject
        """The group's own filter (the consumer also filters its replay subject)."""
        description = (
            f"DelTran {message_type.value} ephemeral reader"
            if ephemeral
            else f"DelTran {message_type.value} consumer group {config.consumer_group}"
        )
        self.start = config.start_token
        self.config = ConsumerConfig(
            name=self.name,
            durable_name=None if ephemeral else self.name,
            description=description,
            metadata={START_METADATA: self.start},
            **start_policy(config.start),  # type: ignore[arg-type]  # ConsumerConfig fields
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=config.ack_wait,
            # Unlimited on the server: the subscriber counts deliveries itself and
            # dead-letters a delivery past max_deliver. A server-side limit would make
            # the NAK after a failed dead-letter store final, abandoning the message.
            max_deliver=-1,
            max_ack_pending=config.max_ack_pending,
            # The group's own replay subject: dead letters replayed to this group only
            # (a reader in no group never dead-letters, so nothing is replayed to it).
            filter_subjects=(
                [filter_subject]
                if ephemeral
                else [filter_subject, replay_subject(stream, self.name)]
            ),
            replay_policy=ReplayPolicy.INSTANT,
            inactive_threshold=inactive_threshold if ephemeral else None,
        )
        self.ack_floor = 0
        self.stream_created: datetime | None = None
        """Creation time of the stream whose sequences ``ack_floor`` counts."""
        self._consumer_created: datetime | None = None
        self.generation = 0
        """Bumped whenever the stream or the consumer is found re-created."""

    def _note(self, info: ConsumerInfo) -> None:
        self._bound_to(info.created)
        floor = info.ack_floor.stream_seq if info.ack_floor is not None else None
        if floor and floor > self.ack_floor:
            self.ack_floor = floor

    async def refresh(self, timeout: float) -> bool:
        """Updates ``ack_floor`` from JetStream; False if the consumer must be bound again.

        That is when it is gone, or is another consumer of the same name than the one
        bound (re-created meanwhile, perhaps on a new stream). Errors other than "not
        found" are ignored (the next refresh tries again).
        """
        try:
            info = await self.client.jetstream.consumer_info(self.stream, self.name, timeout)
        except nats.js.errors.NotFoundError:
            return False
        except (nats.errors.Error, nats.js.errors.Error, MessageBusError, TimeoutError) as exc:
            log.debug("consumer %s: no ack floor (%s)", self.name, exc)
            return True
        if self._consumer_created is not None and info.created != self._consumer_created:
            return False
        self._note(info)
        return True

    def _bound_to(self, created: datetime | None) -> None:
        """Records the consumer's creation time; another one than before is a new generation."""
        known = self._consumer_created
        if known is not None and created != known:
            self.generation += 1
        self._consumer_created = created

    def _check_stream(self, info: StreamInfo) -> None:
        """Forgets the ack floor if ``info`` is of a new stream (see the class doc)."""
        created, last = info.created, info.state.last_seq
        known = self.stream_created
        self.stream_created = created
        renewed = known is not None and created is not None and created != known
        if renewed:
            self.generation += 1
        if not (renewed or last < self.ack_floor) or not self.ack_floor:
            return
        log.warning(
            "stream %s is a new stream (created %s, last sequence %d; the one consumer %s "
            "acknowledged up to sequence %d of is gone): consuming it from its start",
            self.stream,
            created.isoformat() if created is not None else "at an unknown time",
            last,
            self.name,
            self.ack_floor,
        )
        self.ack_floor = 0

    def _check_filter(self, have: ConsumerConfig) -> None:
        found = _filters(have)
        if found in (_filters(self.config), [self.filter_subject]):
            return
        raise ValidationError(
            "consumer_name",
            self.name,
            f"already consumes {', '.join(found) or 'everything'!r} on {self.stream}, not "
            f"{self.filter_subject!r}; a consumer's filter is never changed (delete the "
            "consumer or pick another group)",
        )

    def _check_start(self, have: ConsumerConfig) -> None:
        found = recorded_start(have)
        if found != self.start:
            raise StartPositionConflict(self.name, self.start, found)

    def _drift(self, have: ConsumerConfig) -> list[str]:
        want = self.config
        lines = []
        for field in ("ack_wait", "max_deliver", "max_ack_pending", "filter_subjects"):
            found, wanted = getattr(have, field), getattr(want, field)
            if field == "ack_wait":
                found, wanted = _seconds(found), _seconds(wanted)
            elif field == "filter_subjects":
                found, wanted = _filters(have), _filters(want)
            if found != wanted:
                lines.append(f"{field}: {found} -> {wanted}")
        recorded = (have.metadata or {}).get(START_METADATA)
        if recorded != self.start:  # a consumer from before start positions: record it
            lines.append(f"metadata {START_METADATA}: {recorded} -> {self.start}")
        return lines

    async def ensure(self, timeout: float | None = None) -> None:
        """Binds to the consumer, creating it if absent or updating drifted settings.

        A consumer created anew delivers the whole stream, unless this object saw an
        ack floor on the same stream: then it starts just after it (see the class doc).

        Args:
            timeout: Seconds per JetStream API call (default: the client's api_timeout).

        Raises:
            StreamError: The stream does not exist or JetStream refused the consumer.
            ValidationError: A consumer of this name filters other subjects.
            BusConnectionError: JetStream did not answer.
        """
        js = self.client.jetstream
        try:
            try:
                stream = await _within(js.stream_info(self.stream), timeout)
            except nats.js.errors.NotFoundError:
                raise StreamError(
                    self.stream, "does not exist; apply the stream catalog first"
                ) from None
            self._check_stream(stream)
            try:
                info = await js.consumer_info(self.stream, self.name, timeout=timeout)
            except nats.js.errors.NotFoundError as exc:
                if exc.err_code == _STREAM_NOT_FOUND:
                    raise StreamError(
                        self.stream, "does not exist; apply the stream catalog first"
                    ) from None
                await self._create(timeout)
                return
            self._check_filter(info.config)
            self._check_start(info.config)
            self._note(info)
            drift = self._drift(info.config)
            if drift:
                log.warning(
                    "consumer %s on %s updated: %s", self.name, self.stream, "; ".join(drift)
                )
                have = info.config
                update = dataclasses.replace(
                    self.config,
                    deliver_policy=have.deliver_policy,
                    opt_start_seq=have.opt_start_seq,
                    opt_start_time=have.opt_start_time,
                    metadata=_metadata(have, self.start),
                )
                self._note(await js.add_consumer(self.stream, config=update, timeout=timeout))
        except nats.js.errors.ServiceUnavailableError as exc:
            raise BusConnectionError(f"JetStream is unavailable: {exc.description}") from exc
        except nats.js.errors.APIError as exc:
            raise StreamError(self.stream, f"consumer {self.name}: {exc.description}") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusConnectionError(f"JetStream did not answer: {exc}") from exc

    async def _create(self, timeout: float | None) -> None:
        config = self.config
        # Bound before (a consumer lost under us) or an ack floor known: resume after
        # the floor. The start position is for a group's first consumer only.
        if self.ack_floor or self._consumer_created is not None:
            config = dataclasses.replace(
                config,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                opt_start_seq=self.ack_floor + 1,
                opt_start_time=None,
            )
        try:
            info = await self._add_new(config, timeout)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _CONSUMER_EXISTS:
                raise
            # Created by someone else since we looked: bind to it, if it is ours.
            existing = await self.client.jetstream.consumer_info(
                self.stream, self.name, timeout=timeout
            )
            self._check_filter(existing.config)
            self._check_start(existing.config)
            self._note(existing)
            return
        if self.ack_floor:
            log.warning(
                "consumer %s on %s was gone; re-created from stream sequence %d "
                "(after its last known ack floor)",
                self.name,
                self.stream,
                self.ack_floor + 1,
            )
        # A new consumer's ack floor is just before its first delivery: the sequence a
        # re-created one resumes after (a group that started from "new" stays there).
        self._note(info)
        log.info("consumer %s on %s created (start %s)", self.name, self.stream, self.start)

    async def _add_new(self, config: ConsumerConfig, timeout: float | None) -> ConsumerInfo:
        """Creates the consumer, failing (10148) if one of that name exists with another
        configuration: a plain add would update it, and so could rewrite its filter.

        Raises:
            nats.js.errors.APIError: JetStream refused (``err_code`` 10148: it exists).
        """
        subject = f"{_JS_API}.CONSUMER.CREATE.{self.stream}.{self.name}"
        if config.filter_subject and config.filter_subject != ">":
            subject += f".{config.filter_subject}"
        request = {"stream_name": self.stream, "config": config.as_dict(), "action": "create"}
        wait = timeout if timeout is not None else self.client.config.api_timeout
        try:
            reply = await self.client.connection.request(
                subject, json.dumps(request).encode(), timeout=wait
            )
        except nats.errors.NoRespondersError:
            raise nats.js.errors.ServiceUnavailableError from None
        try:
            answer = json.loads(reply.data)
        except ValueError:
            raise StreamError(
                self.stream, f"consumer {self.name}: not a JetStream answer"
            ) from None
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises
        info: ConsumerInfo = ConsumerInfo.from_response(answer)
        return info

    async def delete(self, timeout: float | None = None) -> None:
        """Deletes the consumer (best effort: an ephemeral one also expires by itself)."""
        try:
            await _within(self.client.jetstream.delete_consumer(self.stream, self.name), timeout)
        except (nats.errors.Error, nats.js.errors.Error, MessageBusError, TimeoutError) as exc:
            log.debug("consumer %s on %s not deleted: %s", self.name, self.stream, exc)


__all__ = [
    "DEFAULT_INACTIVE_THRESHOLD",
    "START_METADATA",
    "ConsumerBinding",
    "recorded_start",
    "start_policy",
]
