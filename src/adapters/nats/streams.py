"""Idempotent creation of the JetStream streams of a :class:`StreamCatalog`."""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig, StreamInfo

from message_bus.domain.catalog import StreamCatalog, StreamSpec
from message_bus.domain.dead_letter import replay_subjects
from message_bus.domain.errors import (
    BusConnectionError,
    DuplicateWindowError,
    MessageBusError,
    NotFoundError,
    StreamError,
    ValidationError,
)
from message_bus.ports.config import PublisherConfig

from .client import NatsClient
from .ordered_bucket import bucket_config
from .placement import PLACEMENT_WAIT, place, placement_pending

log = logging.getLogger("message_bus.nats.streams")

StreamAction = Literal["created", "updated", "unchanged", "conflict"]

_IMMUTABLE = ("storage", "retention")
"""Fields JetStream cannot change on an existing stream."""
_MUTABLE = (
    "subjects",
    "max_age",
    "duplicate_window",
    "num_replicas",
    "discard",
    "max_msgs",
    "max_bytes",
    "max_msg_size",
)
"""Fields :meth:`StreamManager.apply` corrects in place when they drifted."""
_DRIFT_FIELDS = ("subjects", "retention", "storage", *_MUTABLE[1:])
"""Fields compared with the catalog, in report order."""
_ATTEMPTS = 3
_TRANSIENT = (
    nats.js.errors.ServiceUnavailableError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
)


@dataclass(frozen=True, slots=True)
class StreamReport:
    """What :meth:`StreamManager.apply` did to one stream.

    Attributes:
        name: The stream.
        action: ``created``; ``updated`` (drifted settings were corrected);
            ``unchanged``; or ``conflict`` (a setting JetStream cannot change in place,
            such as the storage type, differs: nothing was changed).
        drift: One line per setting that differed, ``"field: found -> wanted"``.
        problems: One line per setting the stream now has that is unsafe for the
            publishers it was checked against (a duplicate window shorter than their
            retry budget, see :meth:`PublisherConfig.check_duplicate_window`).
    """

    name: str
    action: StreamAction
    drift: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StreamSummary:
    """A stream as it exists on the server.

    Attributes:
        name: Stream name.
        subjects: Subjects it captures.
        messages: Messages stored.
        bytes: Bytes stored.
        first_sequence: Sequence of the oldest stored message.
        last_sequence: Sequence of the newest stored message.
        consumers: Number of consumers.
        replicas: Replica count.
        max_age: Seconds a message is kept (0 = forever).
        duplicate_window: Seconds a ``Nats-Msg-Id`` is remembered.
        storage: ``file`` or ``memory``.
        retention: ``limits``, ``interest`` or ``workqueue``.
        max_msgs: Messages it may hold (-1 = no limit).
        max_bytes: Bytes it may hold (-1 = no limit).
        max_msg_size: Bytes one message may have (-1 = no limit).
        discard: ``new`` (a full stream refuses) or ``old`` (it deletes the oldest).
    """

    name: str
    subjects: tuple[str, ...]
    messages: int
    bytes: int
    first_sequence: int
    last_sequence: int
    consumers: int
    replicas: int
    max_age: float
    duplicate_window: float
    storage: str
    retention: str
    max_msgs: int = -1
    max_bytes: int = -1
    max_msg_size: int = -1
    discard: str = "old"


def _value(value: Any) -> Any:
    return value.value if hasattr(value, "value") else value


class StreamManager:
    """Creates and updates the catalog's streams; lists what exists.

    Each catalog stream becomes a JetStream stream with Limits retention, the spec's
    subjects, max age and limits (count, bytes, message size, storage, discard policy;
    replicas if the spec sets them, else the given count) and the given duplicate window.
    Applying is idempotent: a missing stream is created, a stream whose settings
    drifted is updated back (and the drift reported), a matching one is left alone.

    A replicated stream that JetStream refuses to place only because a peer has not
    reported yet (a node that just started or rejoined: "no suitable peers for
    placement, peer offline") is asked again for up to ``placement_wait`` seconds.

    Args:
        client: A connected :class:`NatsClient` with JetStream enabled.
        placement_wait: Seconds a placement refused for an unreported peer is asked
            again; 0 refuses at once.

    Raises:
        ValidationError: ``placement_wait`` is not a finite number >= 0.
    """

    def __init__(self, client: NatsClient, *, placement_wait: float = PLACEMENT_WAIT) -> None:
        ok = isinstance(placement_wait, int | float) and not isinstance(placement_wait, bool)
        if not ok or not math.isfinite(placement_wait) or placement_wait < 0:
            raise ValidationError(
                "placement_wait", placement_wait, "must be a finite number >= 0 of seconds"
            )
        self.client = client
        self.placement_wait = float(placement_wait)

    def desired(
        self, spec: StreamSpec, replicas: int, duplicate_window: float, *, replays: bool = True
    ) -> StreamConfig:
        """The JetStream configuration of ``spec``; with ``replays``, it also captures the
        subjects that dead letters are replayed on (``deltran.replay.{stream}.>``)."""
        subjects = list(spec.subjects)
        if replays:
            subjects.append(replay_subjects(spec.name))
        limits = spec.limits
        return StreamConfig(
            name=spec.name,
            subjects=subjects,
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.MEMORY if limits.storage == "memory" else StorageType.FILE,
            discard=DiscardPolicy.NEW if limits.discard_policy == "new" else DiscardPolicy.OLD,
            max_age=spec.max_age,
            max_msgs=_unlimited(limits.max_msgs),
            max_bytes=_unlimited(limits.max_bytes),
            max_msg_size=_unlimited(limits.max_msg_size),
            duplicate_window=duplicate_window,
            num_replicas=limits.replicas if limits.replicas is not None else replicas,
        )

    async def apply(
        self,
        catalog: StreamCatalog | None = None,
        replicas: int = 1,
        duplicate_window: float = 120.0,
        *,
        publisher: PublisherConfig | None = None,
    ) -> builtins.list[StreamReport]:
        """Creates or updates every stream of ``catalog`` (dead letters included) and the
        ordered groups' KV bucket.

        Args:
            catalog: The streams; defaults to the design's table.
            replicas: Replica count (1 on one node, 3 on a cluster).
            duplicate_window: Seconds JetStream remembers message ids for deduplication;
                it must not exceed any stream's max age.
            publisher: The config of the publishers that will use the streams: a stream
                whose window (after applying) is shorter than their retry budget is
                reported in ``problems`` (such a publisher refuses the stream).

        Returns:
            One report per stream, in catalog order, then one for the KV bucket of the
            ordered consumer groups (``KV_DELTRAN_ORDERED``, same replicas).

        Raises:
            ValidationError: ``replicas`` or ``duplicate_window`` is out of range.
            StreamError: JetStream refused a stream (e.g. subjects overlap another
                stream, not enough servers for the replicas).
            BusConnectionError: JetStream did not answer.
        """
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ValidationError("replicas", replicas, "must be an int in 1..5")
        ok = isinstance(duplicate_window, int | float) and not isinstance(duplicate_window, bool)
        if not ok or not math.isfinite(duplicate_window) or duplicate_window <= 0:
            raise ValidationError(
                "duplicate_window", duplicate_window, "must be a finite number > 0 of seconds"
            )
        catalog = catalog if catalog is not None else StreamCatalog.default()
        reports = []
        for spec in catalog.all_streams():
            if duplicate_window > spec.max_age:
                raise ValidationError(
                    "duplicate_window", duplicate_window, f"exceeds the max age of {spec.name}"
                )
            want = self.desired(
                spec, replicas, duplicate_window, replays=spec is not catalog.dead_letters
            )
            report = await self._apply_one(want)
            reports.append(_with_problems(report, duplicate_window, publisher))
        reports.append(await self._apply_one(bucket_config(replicas)))
        return reports

    async def apply_stream(
        self, spec: StreamSpec, replicas: int = 1, duplicate_window: float = 120.0
    ) -> StreamReport:
        """Creates or updates one stream (e.g. of a type registered after the catalog
        was applied), as :meth:`apply` does each of the catalog's.

        Raises:
            StreamError: JetStream refused the stream.
            BusConnectionError: JetStream did not answer.
        """
        return await self._apply_one(self.desired(spec, replicas, duplicate_window))

    async def _apply_one(self, want: StreamConfig) -> StreamReport:
        """Creates or updates one stream to ``want``; reports what it did."""
        name = str(want.name)
        js = self.client.jetstream
        try:
            info = await self._call(name, lambda: js.stream_info(name))
        except StreamError as exc:
            if not isinstance(exc.__cause__, nats.js.errors.NotFoundError):
                raise
            await self._call(name, lambda: js.add_stream(want))
            log.info("stream %s created", name)
            return StreamReport(name, "created")
        have = info.config
        drift = tuple(_drift(have, want))
        if not drift:
            return StreamReport(name, "unchanged")
        if any(line.split(":", 1)[0] in _IMMUTABLE for line in drift):
            log.error("stream %s drifted in settings JetStream cannot change: %s", name, drift)
            return StreamReport(name, "conflict", drift)
        fields = {name: getattr(want, name) for name in _MUTABLE}
        await self._call(name, lambda: js.update_stream(have.evolve(**fields)))
        log.warning("stream %s updated: %s", name, "; ".join(drift))
        return StreamReport(name, "updated", drift)

    async def _call(self, name: str, call: Callable[[], Awaitable[Any]]) -> Any:
        """Runs a JetStream API call, retrying while JetStream is briefly unavailable
        (a cluster electing its meta leader, a slow replicated create) and, for up to
        ``placement_wait``, while a placement is refused for a peer that has not
        reported yet. Creating or updating a stream with the same config again is
        idempotent."""
        loop = asyncio.get_running_loop()
        placed_by = loop.time() + self.placement_wait  # one wait across the retries
        for attempt in range(1, _ATTEMPTS + 1):
            try:
                wait = max(0.0, placed_by - loop.time())
                return await place(call, wait, log, f"stream {name}")
            except _TRANSIENT as exc:
                if attempt == _ATTEMPTS:
                    raise _api_failure(name, exc) from exc
                log.info("JetStream busy (stream %s): %s; retrying", name, exc)
                await asyncio.sleep(0.2 * 2 ** (attempt - 1))
            except nats.js.errors.APIError as exc:
                reason = f"{exc.description} (code {exc.err_code})"
                if placement_pending(exc) and self.placement_wait:
                    reason += f"; still so after {self.placement_wait:g} s"
                raise StreamError(name, reason) from exc
            except (nats.errors.Error, TimeoutError) as exc:
                raise _api_failure(name, exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def list(self) -> builtins.list[StreamSummary]:
        """Every stream on the server, sorted by name.

        Raises:
            BusConnectionError: JetStream did not answer.
        """
        js = self.client.jetstream
        summaries: builtins.list[StreamSummary] = []
        offset = 0
        while True:
            try:
                page: builtins.list[StreamInfo] = await js.streams_info(offset)
            except (nats.errors.Error, TimeoutError) as exc:
                raise _api_failure("*", exc) from exc
            summaries.extend(_summary(info) for info in page)
            if not page:
                break
            offset += len(page)
        return sorted(summaries, key=lambda s: s.name)

    async def info(self, name: str) -> StreamSummary:
        """One stream.

        Raises:
            NotFoundError: no such stream (also a ``KeyError``).
            BusConnectionError: JetStream did not answer.
        """
        try:
            info = await self.client.jetstream.stream_info(name)
        except nats.js.errors.NotFoundError:
            raise NotFoundError("stream", name) from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise _api_failure(name, exc) from exc
        return _summary(info)


def _with_problems(
    report: StreamReport, wanted_window: float, publisher: PublisherConfig | None
) -> StreamReport:
    """``report`` with the problems of the window the stream has now."""
    if publisher is None:
        return report
    window = wanted_window
    if report.action == "conflict":  # nothing was changed: the stream kept its window
        for line in report.drift:
            field, _, change = line.partition(": ")
            if field == "duplicate_window":
                window = float(change.split(" -> ")[0])
    try:
        publisher.check_duplicate_window(report.name, window)
    except DuplicateWindowError as exc:
        return dataclasses.replace(report, problems=(f"duplicate_window: {exc.reason}",))
    return report


def config_drift(have: StreamConfig, want: StreamConfig) -> list[str]:
    """One line per setting of ``want`` that ``have`` differs in (``"field: found ->
    wanted"``), as :meth:`StreamManager.apply` reports it; nothing is changed."""
    return _drift(have, want)


def _unlimited(value: int | None) -> int:
    """JetStream's spelling of a limit: -1 for none."""
    return -1 if value is None else value


def _drift(have: StreamConfig, want: StreamConfig) -> list[str]:
    lines = []
    for field in _DRIFT_FIELDS:
        found, wanted = _value(getattr(have, field)), _value(getattr(want, field))
        if field == "subjects":
            found, wanted = sorted(found or []), sorted(wanted or [])
        elif field in ("max_age", "duplicate_window"):
            found, wanted = round(float(found or 0), 6), round(float(wanted or 0), 6)
        elif field == "num_replicas":
            found, wanted = found or 1, wanted or 1
        elif field in ("max_msgs", "max_bytes", "max_msg_size"):
            # the server answers -1 (or 0 from old servers) for "no limit"
            found = -1 if found is None or found <= 0 else found
            wanted = -1 if wanted is None or wanted <= 0 else wanted
        elif field == "discard":
            found = found or "old"
        if found != wanted:
            lines.append(f"{field}: {found} -> {wanted}")
    return lines


def _summary(info: StreamInfo) -> StreamSummary:
    config, state = info.config, info.state
    return StreamSummary(
        name=str(config.name),
        subjects=tuple(config.subjects or ()),
        messages=int(state.messages),
        bytes=int(state.bytes),
        first_sequence=int(state.first_seq),
        last_sequence=int(state.last_seq),
        consumers=int(state.consumer_count),
        replicas=int(config.num_replicas or 1),
        max_age=float(config.max_age or 0.0),
        duplicate_window=float(config.duplicate_window or 0.0),
        storage=str(_value(config.storage)),
        retention=str(_value(config.retention)),
        max_msgs=_limit(config.max_msgs),
        max_bytes=_limit(config.max_bytes),
        max_msg_size=_limit(config.max_msg_size),
        discard=str(_value(config.discard) or "old"),
    )


def _limit(value: int | None) -> int:
    return -1 if value is None or value <= 0 else int(value)


def _api_failure(name: str, error: BaseException) -> MessageBusError:
    if isinstance(error, nats.js.errors.ServiceUnavailableError):
        return BusConnectionError(f"JetStream is unavailable (stream {name}): {error.description}")
    if isinstance(error, nats.js.errors.APIError):
        return StreamError(name, f"{error.description} (code {error.err_code})")
    return BusConnectionError(f"JetStream did not answer (stream {name}): {error}")


__all__ = [
    "StreamAction",
    "StreamError",
    "StreamManager",
    "StreamReport",
    "StreamSummary",
    "config_drift",
]
