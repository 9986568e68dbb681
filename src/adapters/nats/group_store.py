"""The group store of an ordered group on NATS: its records in the ``DELTRAN_ORDERED`` KV bucket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import math
import re
from typing import Any

import msgspec
import nats.errors

from message_bus.adapters.ordered.store import (
    GroupSpec,
    MemberRecord,
    PartitionRecord,
    Snapshot,
    StoreConflict,
    StoreUnavailable,
    Versioned,
    decode,
    encode,
    group_prefix,
    member_key,
    partition_key,
    spec_key,
)
from message_bus.domain.errors import MessageBusError, ValidationError

from .acks import NO_RESPONDERS, shared_ack_mux
from .client import NatsClient
from .failures import MessageTooLarge
from .framing import EncodedBlock
from .headers import header_block, headers_of
from .ordered_bucket import BUCKET_STREAM, BUCKET_SUBJECT_PREFIX, ensure_bucket

log = logging.getLogger("message_bus.nats.ordered")

_KEY_TOKEN = re.compile(r"[A-Za-z0-9_=-]+")
"""One token of a KV key (no ``.``, which separates tokens)."""
_WRONG_LAST_SEQUENCE = 10071
_DIRECT_GET = f"$JS.API.DIRECT.GET.{BUCKET_STREAM}"
_PURGE = f"$JS.API.STREAM.PURGE.{BUCKET_STREAM}"
_MSG_GET = f"$JS.API.STREAM.MSG.GET.{BUCKET_STREAM}"
_NO_MESSAGE = 10037
_EXPECTED = "Nats-Expected-Last-Subject-Sequence"
_REMOVED = ("DEL", "PURGE")
_MULTI_LAST_MAX = 1000
"""Subjects per direct get batch (the server answers at most 1024, else 413)."""
_CREATE_ATTEMPTS = 3
_BEHIND_PAUSE = 0.02


def _token(field: str, value: object) -> str:
    if not isinstance(value, str) or _KEY_TOKEN.fullmatch(value) is None:
        raise ValidationError(field, value, "must be one KV key token ([A-Za-z0-9_=-]+)")
    return value


def _revision(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValidationError(field, value, "must be an int >= 0")
    return value


class _Entry(msgspec.Struct, frozen=True):
    """One key's last message as a direct get returned it."""

    key: str
    revision: int
    data: bytes
    removed: bool


class KvGroupStore:
    """:class:`~message_bus.adapters.ordered.store.GroupStore` on the ``DELTRAN_ORDERED``
    KV bucket.

    Revisions are the bucket stream's sequences. Every write with an expected revision
    is a JetStream publish with ``Nats-Expected-Last-Subject-Sequence`` (0: the key
    must have no value), so the server decides the compare-and-set; a mismatch raises
    :class:`StoreConflict`. A key that was deleted (a delete or purge marker, as ``nats
    kv del`` leaves) counts as absent. A member key is removed with a purge marker
    (compare-and-set for :meth:`forget`, so a heartbeat written since survives), then
    its subject is purged up to that marker, so members that come and go leave nothing
    behind.

    :meth:`snapshot` is one direct get batch (``multi_last`` on the group's keys), one
    round trip without a consumer; a group with more than about a thousand keys takes
    one more batch per thousand partitions. Direct gets may be answered by any replica:
    an answer from one whose stream ends before the highest revision this store wrote
    or read (``Nats-UpTo-Sequence``) is asked again, so a member always reads its own
    writes (the request also carries ``min_last_seq``, for servers that check it
    themselves). The read of a single key (joining, creating over a delete marker) goes
    to the stream's leader.

    The bucket is created on first use if missing (history 1, file storage,
    ``replicas``, direct gets), idempotently. Timeouts, missing responders, a lost
    connection and JetStream errors raise :class:`StoreUnavailable`, never a nats-py
    error.

    Args:
        client: A connected :class:`NatsClient`.
        stream: The stream the group reads.
        consumer: The group's consumer name.
        replicas: Replicas of the bucket, if this store creates it.
        timeout: Seconds per request.
    """

    def __init__(
        self,
        client: NatsClient,
        stream: str,
        consumer: str,
        *,
        replicas: int = 1,
        timeout: float = 5.0,
    ) -> None:
        _token("stream", stream)
        _token("consumer", consumer)
        if isinstance(replicas, bool) or not isinstance(replicas, int) or not 1 <= replicas <= 5:
            raise ValidationError("replicas", replicas, "must be an int in 1..5")
        ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
        if not ok or not math.isfinite(timeout) or timeout <= 0:
            raise ValidationError("timeout", timeout, "must be a finite number > 0 of seconds")
        self.client = client
        self.stream = stream
        self.consumer = consumer
        self.replicas = replicas
        self.timeout = float(timeout)
        self.prefix = group_prefix(stream, consumer)
        self._subject_prefix = f"{BUCKET_SUBJECT_PREFIX}{self.prefix}."
        self._ready = False
        self._seen = 0
        """The highest revision written or read here (see the class doc)."""

    # -- GroupStore ------------------------------------------------------------------------

    async def join(self, spec: GroupSpec) -> Versioned[GroupSpec]:
        key = spec_key(self.prefix)
        data = encode(spec)
        for _ in range(_CREATE_ATTEMPTS):
            try:
                return Versioned(spec, await self._create(key, data))
            except StoreConflict:
                pass
            entry = await self._get(key)
            if entry is not None and not entry.removed:
                try:
                    return Versioned(decode(GroupSpec, entry.data), entry.revision)
                except msgspec.DecodeError as exc:
                    raise StoreUnavailable(f"{key} holds no group spec: {exc}") from exc
        raise StoreUnavailable(f"{key} changed {_CREATE_ATTEMPTS} times while joining")

    async def replace_spec(self, spec: GroupSpec, revision: int) -> int:
        _revision("revision", revision)
        key = spec_key(self.prefix)
        if revision == 0:
            return await self._create(key, encode(spec))
        return await self._put(key, encode(spec), {_EXPECTED: str(revision)})

    async def heartbeat(self, member: str, record: MemberRecord) -> int:
        return await self._put(member_key(self.prefix, _token("member", member)), encode(record))

    async def leave(self, member: str) -> None:
        await self._remove(member_key(self.prefix, _token("member", member)), None)

    async def forget(self, member: str, revision: int) -> None:
        key = member_key(self.prefix, _token("member", member))
        await self._remove(key, _revision("revision", revision))

    async def write_partition(self, partition: int, record: PartitionRecord, revision: int) -> int:
        _revision("partition", partition)
        _revision("revision", revision)
        key = partition_key(self.prefix, partition)
        if revision == 0:
            return await self._create(key, encode(record))
        return await self._put(key, encode(record), {_EXPECTED: str(revision)})

    async def snapshot(self) -> Snapshot:
        entries, upto = await self._multi_last([f"{self._subject_prefix}>"], 0)
        if entries is None:  # more keys than one batch: the members, then the partitions
            head = [f"{self._subject_prefix}group", f"{self._subject_prefix}member.*"]
            entries, upto = await self._multi_last(head, 0)
            partitions = self._partition_count(entries or [])
            subjects = [f"{self._subject_prefix}partition.{p}" for p in range(partitions)]
            for start in range(0, len(subjects), _MULTI_LAST_MAX):
                chunk, _ = await self._multi_last(subjects[start : start + _MULTI_LAST_MAX], upto)
                if chunk is None:
                    raise StoreUnavailable(f"{self.prefix}: too many keys in one read")
                entries = [*(entries or []), *chunk]
        snapshot = Snapshot()
        cut = len(self.prefix) + 1
        for entry in entries or []:
            if entry.removed:
                continue
            kind, _, name = entry.key[cut:].partition(".")
            if kind == "member" and name:
                snapshot.members[name] = entry.revision
            elif kind == "partition" and name.isdigit():
                try:
                    record = decode(PartitionRecord, entry.data)
                except msgspec.DecodeError as exc:
                    log.error(
                        "%s holds no partition record (%s): read as a fresh record", entry.key, exc
                    )
                    record = PartitionRecord()
                snapshot.partitions[int(name)] = Versioned(record, entry.revision)
        return snapshot

    # -- requests --------------------------------------------------------------------------

    def _partition_count(self, entries: list[_Entry]) -> int:
        key = spec_key(self.prefix)
        for entry in entries:
            if entry.key == key and not entry.removed:
                try:
                    return decode(GroupSpec, entry.data).partitions
                except msgspec.DecodeError:
                    break
        raise StoreUnavailable(f"{self.prefix}: too many keys, and no group spec to count them")

    def _saw(self, revision: int) -> int:
        if revision > self._seen:
            self._seen = revision
        return revision

    async def _ensure(self) -> None:
        if not self._ready:
            await ensure_bucket(self.client, self.replicas, self.timeout)
            self._ready = True

    def _live(self) -> Any:
        """The nats-py connection if it is up, else :class:`StoreUnavailable` at once."""
        try:
            nc = self.client.connection
        except MessageBusError as exc:
            raise StoreUnavailable(f"bucket {BUCKET_STREAM}: {exc}") from exc
        if not nc.is_connected:
            raise StoreUnavailable(f"bucket {BUCKET_STREAM}: NATS is not connected")
        return nc

    async def _request(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Any:
        """A request's reply (a nats-py ``Msg``); connection problems raise
        :class:`StoreUnavailable`."""
        await self._ensure()
        nc = self._live()
        try:
            return await nc.request(subject, payload, timeout=self.timeout, headers=headers)
        except nats.errors.NoRespondersError as exc:
            self._ready = False  # the bucket may be gone: look again next time
            raise StoreUnavailable(f"{subject}: no responders (JetStream unavailable)") from exc
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"{subject}: {exc!r}") from exc

    async def _api(
        self, subject: str, payload: bytes, headers: dict[str, str] | None = None
    ) -> Any:
        reply = await self._request(subject, payload, headers)
        try:
            answer = json.loads(reply.data)
        except ValueError as exc:
            raise StoreUnavailable(f"{subject}: not a JetStream answer") from exc
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") == _WRONG_LAST_SEQUENCE:
                raise StoreConflict(f"{subject}: {error.get('description')}")
            raise StoreUnavailable(
                f"{subject}: {error.get('description')} (code {error.get('err_code')})"
            )
        return answer

    async def _put(self, key: str, data: bytes, headers: dict[str, str] | None = None) -> int:
        """Writes ``key``: a publish to the bucket's stream, its acknowledgement awaited on
        the connection's shared acknowledgement inbox (as the publishers' are), not a
        request with an inbox, a reply message and a header dict of its own."""
        await self._ensure()
        self._live()
        subject = BUCKET_SUBJECT_PREFIX + key
        block = EncodedBlock(subject, header_block(headers or {}), data, None)
        try:
            mux = await shared_ack_mux(self.client)
            ack = await mux.request(block, self.timeout)
        except (nats.errors.Error, MessageBusError, MessageTooLarge, OSError) as exc:
            raise StoreUnavailable(f"{subject}: {exc!r}") from exc
        error = ack.error
        if error is None:
            return self._saw(ack.seq)
        if ack is NO_RESPONDERS:
            self._ready = False  # the bucket may be gone: look again next time
        if error.err_code == _WRONG_LAST_SEQUENCE:
            raise StoreConflict(f"{subject}: {error.description}")
        raise StoreUnavailable(f"{subject}: {error.description} (code {error.err_code})")

    async def _create(self, key: str, data: bytes) -> int:
        """Writes ``key`` if it has no value (none, or a delete marker)."""
        try:
            return await self._put(key, data, {_EXPECTED: "0"})
        except StoreConflict:
            entry = await self._get(key)
            if entry is None or not entry.removed:
                raise
            return await self._put(key, data, {_EXPECTED: str(entry.revision)})

    async def _remove(self, key: str, revision: int | None) -> None:
        """Removes ``key`` (only if it is at ``revision``, unless None): a purge marker,
        compare-and-set and counted in the stream's last sequence (so reads that wait
        for it see the key gone), then a purge of the subject up to that marker, so
        nothing of the key is left behind and a value written since survives."""
        headers = {"KV-Operation": "PURGE", "Nats-Rollup": "sub"}
        if revision is not None:
            headers[_EXPECTED] = str(revision)
        try:
            marker = await self._put(key, b"", headers)
        except StoreConflict:
            return  # it changed since (a heartbeat), or is gone already
        request = {"filter": BUCKET_SUBJECT_PREFIX + key, "seq": marker + 1}
        try:
            await self._api(_PURGE, json.dumps(request).encode())
        except StoreUnavailable as exc:  # removed all the same: only the marker stays
            log.debug("%s: purge marker %d kept (%s)", key, marker, exc)

    async def _get(self, key: str) -> _Entry | None:
        """The key's last message (a delete marker included), None if it has none; read
        from the stream's leader, so it is never older than a write it refused."""
        request = {"last_by_subj": BUCKET_SUBJECT_PREFIX + key}
        reply = await self._request(_MSG_GET, json.dumps(request).encode())
        try:
            answer = json.loads(reply.data)
        except ValueError as exc:
            raise StoreUnavailable(f"{key}: not a JetStream answer") from exc
        error = answer.get("error")
        if error is not None:
            if error.get("err_code") == _NO_MESSAGE:
                return None
            raise StoreUnavailable(
                f"{key}: {error.get('description')} (code {error.get('err_code')})"
            )
        stored = answer["message"]
        block = base64.b64decode(stored["hdrs"]) if stored.get("hdrs") else None
        data = base64.b64decode(stored["data"]) if stored.get("data") else b""
        headers = headers_of(block) or {}
        removed = headers.get("KV-Operation") in _REMOVED
        revision = self._saw(int(stored["seq"]))
        return _Entry(key, revision, data, removed)

    def _entry(self, headers: dict[str, str], data: bytes) -> _Entry:
        subject = headers.get("Nats-Subject", "")
        revision = self._saw(int(headers.get("Nats-Sequence", "0")))
        removed = headers.get("KV-Operation") in _REMOVED
        return _Entry(subject.removeprefix(BUCKET_SUBJECT_PREFIX), revision, data, removed)

    async def _multi_last(self, subjects: list[str], upto: int) -> tuple[list[_Entry] | None, int]:
        """The last message of every subject matching ``subjects`` (None: too many),
        and the stream sequence the read stopped at."""
        for attempt in range(_CREATE_ATTEMPTS + 1):
            result = await self._multi_last_once(subjects, upto)
            if result is not None:
                return result
            if attempt + 1 == _CREATE_ATTEMPTS:
                await self._check_seen()
            else:
                await asyncio.sleep(_BEHIND_PAUSE)  # a lagging replica answered: ask again
        raise StoreUnavailable(f"{self.prefix}: the replicas asked are behind {self._seen}")

    async def _check_seen(self) -> None:
        """Lowers the revision reads wait for to the bucket's last one, if it is below:
        the bucket was deleted and created again, its revisions start over."""
        answer = await self._api(f"$JS.API.STREAM.INFO.{BUCKET_STREAM}", b"")
        last = int(answer.get("state", {}).get("last_seq", 0))
        if last < self._seen:
            log.warning(
                "bucket %s is a new one (last revision %d, %d seen before)",
                BUCKET_STREAM,
                last,
                self._seen,
            )
            self._seen = last

    async def _multi_last_once(
        self, subjects: list[str], upto: int
    ) -> tuple[list[_Entry] | None, int] | None:
        await self._ensure()
        nc = self._live()
        request: dict[str, Any] = {"multi_last": subjects}
        if upto:
            request["up_to_seq"] = upto
        if self._seen:
            request["min_last_seq"] = self._seen
        inbox = nc.new_inbox()
        entries: list[_Entry] = []
        loop = asyncio.get_running_loop()
        done: asyncio.Future[tuple[str, dict[str, str]]] = loop.create_future()

        def on_message(subject: bytes, reply: bytes, data: bytes, block: bytes | None) -> None:
            headers = headers_of(block) or {}
            status = headers.get("Status")
            if status is None:
                entries.append(self._entry(headers, data))
            elif not done.done():
                done.set_result((status, headers))

        try:
            sub = await self.client.subscribe_raw(inbox, on_message)
        except (nats.errors.Error, OSError) as exc:
            raise StoreUnavailable(f"{_DIRECT_GET}: {exc!r}") from exc
        try:
            await nc.publish(_DIRECT_GET, json.dumps(request).encode(), reply=inbox)
            async with asyncio.timeout(self.timeout):
                status, headers = await done
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise StoreUnavailable(f"{_DIRECT_GET}: no answer ({exc!r})") from exc
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
        if status == "204":  # end of batch
            upto_read = int(headers.get("Nats-UpTo-Sequence", "0") or 0)
            if upto_read < self._seen and not upto:
                return None  # a replica behind this store's own writes and reads answered
            return entries, upto_read
        if status == "404":
            return [], upto
        if status == "413":
            return None, upto
        if status == "412":
            return None
        if status == "503":
            self._ready = False
        raise StoreUnavailable(f"{_DIRECT_GET}: {status} {headers.get('Description', '')}")


__all__ = ["KvGroupStore"]
