"""Stream backups and restores over JetStream's snapshot and restore API, with checksums.

The protocol is the one ``nats stream backup`` speaks. Backup: a request to
``$JS.API.STREAM.SNAPSHOT.<stream>`` names a deliver subject; the server answers with the
stream's configuration and state, then streams the snapshot (an S2-compressed tar of the
stream's store, consumers included) to that subject in chunks. A chunk with a reply
subject is acknowledged with an empty message (flow control: the server stops sending
while too many bytes are unacknowledged); an empty message ends the snapshot, its status
header saying whether it is complete (``204``) or not (``408``, ``500``). Restore: a
request to ``$JS.API.STREAM.RESTORE.<stream>`` with the configuration and state returns a
deliver subject; every chunk is sent there as a request (answered when stored), and an
empty request finishes it, answered with the restored stream's info.

A backup of stream ``S`` in a directory is two files: ``S.snapshot`` (the snapshot as the
server sent it) and ``S.json``, its manifest (configuration, state, size and SHA-256 of
the snapshot). The manifest is written last, so a backup cut short has none; a restore
checks the snapshot against the manifest before it sends a byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from message_bus.domain.errors import (
    BackupError,
    BusConnectionError,
    NotFoundError,
    StreamError,
    ValidationError,
)

from .client import NatsClient

__all__ = [
    "CHUNK_SIZE",
    "MANIFEST_FORMAT",
    "Progress",
    "SnapshotManifest",
    "StreamSnapshots",
    "check_stream_name",
    "manifest_path",
    "snapshot_path",
]

log = logging.getLogger("message_bus.nats.snapshots")

CHUNK_SIZE = 128 * 1024
"""Bytes per snapshot chunk (the server's default; ``nats stream backup`` uses the same)."""
MANIFEST_FORMAT = "deltran-stream-backup/1"
_API = "$JS.API.STREAM"
_STREAM_NOT_FOUND = 10059
_PROBE = 2.0
"""Seconds each readiness probe of a restored stream waits for its answer."""
_NAME = re.compile(r"[^\s.*>/\\\x00]{1,255}")

Progress = Callable[[str, int, int], None]
"""Called as ``progress(stream, bytes_done, bytes_total)`` while a snapshot moves; the
total of a backup is the stream's size in store, an estimate (the snapshot is
compressed), and the last call of a finished transfer has ``bytes_done == bytes_total``."""


def check_stream_name(name: str) -> str:
    """``name`` if it can name a JetStream stream (and a file): 1-255 characters, none of
    them whitespace, ``.``, ``*``, ``>``, ``/``, ``\\`` or NUL.

    Raises:
        ValidationError: (field ``stream``) it cannot.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValidationError(
            "stream",
            name,
            "a stream name is 1-255 characters without whitespace, '.', '*', '>', '/' or '\\'",
        )
    return name


def snapshot_path(directory: Path, stream: str) -> Path:
    """Where the snapshot of ``stream`` is kept in ``directory``."""
    return directory / f"{check_stream_name(stream)}.snapshot"


def manifest_path(directory: Path, stream: str) -> Path:
    """Where the manifest of ``stream``'s snapshot is kept in ``directory``."""
    return directory / f"{check_stream_name(stream)}.json"


@dataclass(frozen=True, slots=True)
class SnapshotManifest:
    """What a backup recorded about one stream's snapshot.

    Attributes:
        stream: the stream's name.
        sha256: hex SHA-256 of the snapshot file.
        size: the snapshot file's size in bytes.
        chunks: how many chunks the server sent.
        messages: messages in the stream when the snapshot was taken.
        consumers: consumers in the stream then (their state is in the snapshot).
        created: when the backup finished (RFC 3339, UTC).
        config: the stream's configuration, as JetStream returned it.
        state: the stream's state, as JetStream returned it.
    """

    stream: str
    sha256: str
    size: int
    chunks: int
    messages: int
    consumers: int
    created: str
    config: dict[str, Any]
    state: dict[str, Any]

    def to_json(self) -> str:
        """The manifest file's text."""
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "stream": self.stream,
                "file": f"{self.stream}.snapshot",
                "sha256": self.sha256,
                "size": self.size,
                "chunks": self.chunks,
                "messages": self.messages,
                "consumers": self.consumers,
                "created": self.created,
                "config": self.config,
                "state": self.state,
            },
            indent=2,
            sort_keys=True,
        )

    @classmethod
    def load(cls, directory: Path, stream: str) -> SnapshotManifest:
        """The manifest of ``stream``'s backup in ``directory``.

        Raises:
            BackupError: it is missing, unreadable, or not a manifest of ``stream``.
        """
        path = manifest_path(directory, stream)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BackupError(stream, str(path), "no backup manifest") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BackupError(stream, str(path), f"unreadable backup manifest: {exc}") from exc
        try:
            if data["format"] != MANIFEST_FORMAT:
                raise ValueError(f"format {data['format']!r}, expected {MANIFEST_FORMAT!r}")
            if data["stream"] != stream or data["config"].get("name") != stream:
                raise ValueError(f"it is the manifest of stream {data['stream']!r}")
            return cls(
                stream=stream,
                sha256=str(data["sha256"]),
                size=int(data["size"]),
                chunks=int(data["chunks"]),
                messages=int(data["messages"]),
                consumers=int(data["consumers"]),
                created=str(data["created"]),
                config=dict(data["config"]),
                state=dict(data["state"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise BackupError(stream, str(path), f"invalid backup manifest: {exc}") from exc

    def verify(self, directory: Path) -> None:
        """Checks the snapshot file against this manifest (size, then SHA-256).

        Raises:
            BackupError: the file is missing or does not match.
        """
        path = snapshot_path(directory, self.stream)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BackupError(self.stream, str(path), "snapshot file missing") from None
        if size != self.size:
            raise BackupError(
                self.stream,
                str(path),
                f"snapshot file corrupted: {size} bytes, the manifest says {self.size}",
            )
        digest = file_sha256(path)
        if digest != self.sha256:
            raise BackupError(
                self.stream,
                str(path),
                f"snapshot file corrupted: sha256 {digest}, the manifest says {self.sha256}",
            )


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of the file at ``path``."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


class StreamSnapshots:
    """Backs streams up to a directory and restores them from it.

    Args:
        client: a connected :class:`NatsClient` with JetStream enabled.
        timeout: seconds to wait for each API answer, each chunk and each chunk's
            acknowledgement.
        chunk_size: bytes per chunk the server sends and the restore sends.
    """

    def __init__(
        self, client: NatsClient, *, timeout: float = 30.0, chunk_size: int = CHUNK_SIZE
    ) -> None:
        if timeout <= 0:
            raise ValidationError("timeout", timeout, "must be > 0 seconds")
        if not 1024 <= chunk_size <= 1024 * 1024:
            raise ValidationError("chunk_size", chunk_size, "must be 1 KiB to 1 MiB")
        self.client = client
        self.timeout = timeout
        self.chunk_size = chunk_size

    async def backup(
        self, stream: str, directory: Path, progress: Progress | None = None
    ) -> SnapshotManifest:
        """Writes a consistent snapshot of ``stream``, its consumers included, and its
        manifest into ``directory`` (created if missing); replaces an older backup of it.

        Raises:
            ValidationError: ``stream`` is not a stream name.
            NotFoundError: no such stream.
            StreamError: JetStream refused or cut the snapshot short.
            BusConnectionError: JetStream did not answer.
        """
        check_stream_name(stream)
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        nc = self.client.connection
        inbox = nc.new_inbox()
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def collect(msg: Msg) -> None:
            queue.put_nowait(msg)

        sub = await nc.subscribe(inbox, cb=collect)
        target = snapshot_path(directory, stream)
        partial = target.with_name(target.name + ".partial")
        try:
            request = {
                "deliver_subject": inbox,
                "no_consumers": False,
                "chunk_size": self.chunk_size,
                "jsck": False,
            }
            answer = await self._api(stream, f"{_API}.SNAPSHOT.{stream}", request)
            config, state = dict(answer["config"]), dict(answer.get("state") or {})
            estimate = max(int(state.get("bytes", 0)), 1)
            digest, size, chunks = hashlib.sha256(), 0, 0
            with partial.open("wb") as file:
                while True:
                    msg = await self._next_chunk(stream, queue)
                    if not msg.data:
                        self._check_end(stream, msg)
                        break
                    file.write(msg.data)
                    digest.update(msg.data)
                    size += len(msg.data)
                    chunks += 1
                    if msg.reply:
                        await nc.publish(msg.reply, b"")
                    if progress is not None:
                        progress(stream, min(size, estimate - 1), estimate)
                file.flush()
                os.fsync(file.fileno())
            partial.replace(target)
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
            partial.unlink(missing_ok=True)
        manifest = SnapshotManifest(
            stream=stream,
            sha256=digest.hexdigest(),
            size=size,
            chunks=chunks,
            messages=int(state.get("messages", 0)),
            consumers=int(state.get("consumer_count", 0)),
            created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            config=config,
            state=state,
        )
        _write_atomically(manifest_path(directory, stream), manifest.to_json())
        if progress is not None:
            progress(stream, estimate, estimate)
        log.info("stream %s backed up: %d bytes in %d chunks", stream, size, chunks)
        return manifest

    async def exists(self, stream: str) -> bool:
        """Whether ``stream`` exists on the server."""
        try:
            await self._api(stream, f"{_API}.INFO.{check_stream_name(stream)}", None)
        except NotFoundError:
            return False
        return True

    async def delete(self, stream: str) -> None:
        """Deletes ``stream`` (its messages and consumers)."""
        await self._api(stream, f"{_API}.DELETE.{check_stream_name(stream)}", None)

    async def restore(
        self,
        stream: str,
        directory: Path,
        *,
        force: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        """Recreates ``stream``, its messages and its consumers' positions, from its backup
        in ``directory``; returns the restored stream's state.

        The snapshot is checked against its manifest first. An existing stream is
        refused unless ``force``, which deletes it first.

        Raises:
            ValidationError: ``stream`` is not a stream name.
            BackupError: no valid backup of ``stream`` (a checksum mismatch included), or
                the stream exists and ``force`` is not given.
            StreamError: JetStream refused the restore.
            BusConnectionError: JetStream did not answer.
        """
        manifest = SnapshotManifest.load(directory, check_stream_name(stream))
        await asyncio.to_thread(manifest.verify, directory)
        if await self.exists(stream):
            if not force:
                raise BackupError(
                    stream, "", "the stream exists; restore with --force to replace it"
                )
            log.warning("stream %s exists: deleting it before the restore", stream)
            await self.delete(stream)
        nc = self.client.connection
        answer = await self._api(
            stream,
            f"{_API}.RESTORE.{stream}",
            {"config": manifest.config, "state": manifest.state},
        )
        deliver = str(answer["deliver_subject"])
        sent = 0
        with snapshot_path(directory, stream).open("rb") as file:
            while chunk := file.read(self.chunk_size):
                reply = await self._send(stream, nc.request(deliver, chunk, timeout=self.timeout))
                if reply.data:
                    _raise_api_error(stream, json.loads(reply.data))
                sent += len(chunk)
                if progress is not None:
                    progress(stream, min(sent, manifest.size - 1), max(manifest.size, 1))
        # the server answers the end of the restore once the stream is recovered
        end = await self._send(stream, nc.request(deliver, b"", timeout=self.timeout * 4))
        info = _decode(stream, end.data)
        _raise_api_error(stream, info)
        await self._wait_until_served(stream)
        if progress is not None:
            progress(stream, max(manifest.size, 1), max(manifest.size, 1))
        state = dict(info.get("state") or {})
        log.info("stream %s restored: %s messages", stream, state.get("messages"))
        return state

    async def _wait_until_served(self, stream: str) -> None:
        """Waits until the restored stream and each of its consumers answer for themselves:
        on a cluster their replica groups elect leaders after the restore is answered, and
        a group resuming before that would find its consumer unavailable."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout * 4
        while True:
            waiting = "the stream"
            try:
                info = await self._api(stream, f"{_API}.INFO.{stream}", None, timeout=_PROBE)
                clustered = bool((info.get("cluster") or {}).get("raft_group"))
                _require_leader(stream, "the stream", info, clustered)
                names = await self._api(
                    stream, f"$JS.API.CONSUMER.NAMES.{stream}", {"offset": 0}, timeout=_PROBE
                )
                for name in names.get("consumers") or []:
                    waiting = f"consumer {name}"
                    consumer = await self._api(
                        stream, f"$JS.API.CONSUMER.INFO.{stream}.{name}", None, timeout=_PROBE
                    )
                    _require_leader(stream, waiting, consumer, clustered)
                return
            except (StreamError, NotFoundError, BusConnectionError) as exc:
                if loop.time() >= deadline:
                    raise StreamError(
                        stream,
                        f"restored, but {waiting} did not answer within "
                        f"{self.timeout * 4:g}s: {exc}",
                    ) from exc
            await asyncio.sleep(0.1)

    async def _api(
        self,
        stream: str,
        subject: str,
        body: dict[str, Any] | None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        payload = b"" if body is None else json.dumps(body).encode()
        nc = self.client.connection
        wait = self.timeout if timeout is None else timeout
        msg = await self._send(stream, nc.request(subject, payload, timeout=wait))
        answer = _decode(stream, msg.data)
        _raise_api_error(stream, answer)
        return answer

    async def _send(self, stream: str, call: Any) -> Msg:
        try:
            msg: Msg = await call
        except nats.errors.NoRespondersError as exc:
            raise BusConnectionError(f"JetStream is not enabled (stream {stream})") from exc
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusConnectionError(f"JetStream did not answer (stream {stream}): {exc}") from exc
        return msg

    async def _next_chunk(self, stream: str, queue: asyncio.Queue[Msg]) -> Msg:
        try:
            return await asyncio.wait_for(queue.get(), self.timeout)
        except TimeoutError:
            raise StreamError(
                stream, f"no snapshot chunk from the server within {self.timeout}s"
            ) from None

    @staticmethod
    def _check_end(stream: str, msg: Msg) -> None:
        headers = msg.headers or {}
        status = headers.get("Status", "")
        if status not in ("", "204"):
            description = headers.get("Description", "")
            raise StreamError(stream, f"snapshot cut short by the server: {status} {description}")


def _require_leader(stream: str, what: str, info: dict[str, Any], clustered: bool) -> None:
    """On a cluster, ``what`` is served once its replica group has a leader: a restored
    consumer first answers from its stream's leader alone, with no replica group yet."""
    if clustered and not (info.get("cluster") or {}).get("leader"):
        raise StreamError(stream, f"{what} has no leader yet")


def _decode(stream: str, data: bytes) -> dict[str, Any]:
    try:
        answer = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise StreamError(stream, f"JetStream answered {data[:80]!r}: {exc}") from exc
    if not isinstance(answer, dict):
        raise StreamError(stream, f"JetStream answered {data[:80]!r}")
    return answer


def _raise_api_error(stream: str, answer: dict[str, Any]) -> None:
    error = answer.get("error")
    if not error:
        return
    if error.get("err_code") == _STREAM_NOT_FOUND:
        raise NotFoundError("stream", stream)
    raise StreamError(
        stream, f"{error.get('description', 'error')} (code {error.get('err_code', '?')})"
    )


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)
