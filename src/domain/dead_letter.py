"""Dead letters: a message that could not be processed, with why and where it came from."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from .catalog import DEAD_LETTER_SUBJECT_PREFIX, SUBJECT_ROOT
from .codec import H_MSG_ID, Encoded, WireCodec, format_timestamp, is_id, parse_timestamp
from .errors import DecodeError, ValidationError
from .message import Message

H_DLQ_REASON = "Deltran-Dlq-Reason"
H_DLQ_SUBJECT = "Deltran-Dlq-Subject"
H_DLQ_STREAM = "Deltran-Dlq-Stream"
H_DLQ_SEQUENCE = "Deltran-Dlq-Sequence"
H_DLQ_DELIVERIES = "Deltran-Dlq-Deliveries"
H_DLQ_GROUP = "Deltran-Dlq-Consumer-Group"
H_DLQ_CONSUMER = "Deltran-Dlq-Consumer"
H_DLQ_MESSAGE_ID = "Deltran-Dlq-Message-Id"
H_DLQ_FAILED_AT = "Deltran-Dlq-Failed-At"
H_DLQ_RAW = "Deltran-Dlq-Raw-Header-Bytes"
"""Present on a dead letter kept raw: its body is the original header block (this many
bytes) followed by the original body."""
H_REPLAY_OF = "Deltran-Replay-Of"
H_REPLAY_SUBJECT = "Deltran-Replay-Subject"
H_REPLAY_DEAD_LETTER = "Deltran-Replay-Dead-Letter"
H_REPLAYED_DEAD_LETTER = "Deltran-Replayed-Dead-Letter"
H_REPLAYED_AT = "Deltran-Replayed-At"
H_REPLAYED_STREAM = "Deltran-Replayed-Stream"
H_REPLAYED_SEQUENCE = "Deltran-Replayed-Sequence"
H_REPLAYED_MESSAGE_ID = "Deltran-Replayed-Message-Id"
H_REPLAYED_COUNT = "Deltran-Replayed-Count"

REPLAY_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.replay"
"""A replay copy travels on ``deltran.replay.{stream}.{consumer}``: only the consumer
that dead-lettered the message filters on it."""
REPLAYED_SUBJECT_PREFIX = f"{DEAD_LETTER_SUBJECT_PREFIX}.replayed"
"""Replay markers are stored on ``deltran.dlq.replayed.{dead-letter sequence}``."""

_DLQ_PREFIX = "deltran-dlq-"
_REPLAY_PREFIX = "deltran-replay"
_MAX_REASON = 512
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token: what a header name is
_SUBJECT_TOKEN = re.compile(r"[!-~]+")  # printable ASCII, no space
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

BlockParser = Callable[[bytes], Mapping[str, str] | None]
"""Reads a raw header block into headers (the adapter's lenient parser)."""


@dataclass(frozen=True, slots=True)
class RawMessage:
    """A received message kept as data, exactly as it arrived.

    Attributes:
        subject: the subject it was published to.
        header_block: its header block as received (empty if it had none).
        body: its body as received.
        headers: a lenient reading of ``header_block`` (for display).
    """

    subject: str
    header_block: bytes
    body: bytes
    headers: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Replay:
    """One replay of a dead letter: where the copy went and when.

    Attributes:
        replayed_at: when it was replayed (UTC).
        stream: the stream the replay copy was stored in.
        sequence: the copy's sequence in that stream.
        message_id: the copy's ``Nats-Msg-Id``.
        count: 1 for the first replay of the dead letter, 2 for the next...
    """

    replayed_at: datetime
    stream: str
    sequence: int
    message_id: str
    count: int


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message and the facts about its failure.

    Attributes:
        message: the original message, decoded; None when it cannot be decoded (a
            foreign message): ``raw`` holds it then.
        reason: why it was dead-lettered (handler's reason or "max deliveries ...").
        subject: the subject it was originally published to.
        stream: the stream it came from.
        sequence: its sequence in that stream.
        deliveries: how many times it was delivered.
        consumer_group: the group that gave up on it.
        failed_at: when it was dead-lettered (UTC).
        dlq_sequence: its sequence in the dead-letter stream, once stored.
        consumer: the durable consumer (durable name, group, filter) that gave up.
        raw: the original as received, when it was kept raw (it could not be decoded,
            or its headers could not be carried over) or cannot be decoded.
        replays: its replays, oldest first.
    """

    message: Message | None
    reason: str
    subject: str
    stream: str
    sequence: int
    deliveries: int
    consumer_group: str
    failed_at: datetime
    dlq_sequence: int | None = None
    consumer: str = ""
    raw: RawMessage | None = None
    replays: tuple[Replay, ...] = ()

    @property
    def replayed(self) -> Replay | None:
        """The latest replay, or None if it was never replayed."""
        return self.replays[-1] if self.replays else None


def _clean(text: str) -> str:
    """Header-safe text: no CR/LF/NUL, bounded length."""
    return " ".join(text.replace("\x00", " ").split())[:_MAX_REASON] or "-"


def _safe_value(value: str) -> bool:
    return "\r" not in value and "\n" not in value and "\x00" not in value


def dead_letter_subject(original_subject: str) -> str:
    """``deltran.dlq.{original subject without 'deltran.'}``."""
    return f"{DEAD_LETTER_SUBJECT_PREFIX}.{original_subject.removeprefix('deltran.')}"


def carries_over(headers: Mapping[str, str]) -> bool:
    """Whether a dead letter can carry ``headers`` as headers of its own.

    Not when a name is not an HTTP token, a value holds CR, LF or NUL, or a name is a
    ``Nats-*`` header other than ``Nats-Msg-Id`` (``Nats-Expected-Stream`` and its
    kin would make JetStream refuse or reshape the dead letter) or a ``Deltran-Dlq-*``
    or ``Deltran-Replay*`` header (the dead letter writes its own).
    """
    for name, value in headers.items():
        if _TOKEN.fullmatch(name) is None or not _safe_value(value):
            return False
        lowered = name.lower()
        if lowered.startswith("nats-") and name != H_MSG_ID:
            return False
        if lowered.startswith((_DLQ_PREFIX, _REPLAY_PREFIX)):
            return False
    return True


def _facts(
    original_subject: str,
    message_id: str | None,
    *,
    reason: str,
    stream: str,
    sequence: int,
    deliveries: int,
    consumer_group: str,
    consumer: str | None,
    failed_at: datetime,
) -> dict[str, str]:
    consumer = consumer or consumer_group
    facts = {
        H_MSG_ID: f"dlq:{consumer}:{stream}:{sequence}",
        H_DLQ_REASON: _clean(reason),
        H_DLQ_SUBJECT: _clean(original_subject),
        H_DLQ_STREAM: _clean(stream),
        H_DLQ_SEQUENCE: str(sequence),
        H_DLQ_DELIVERIES: str(deliveries),
        H_DLQ_GROUP: _clean(consumer_group),
        H_DLQ_CONSUMER: _clean(consumer),
        H_DLQ_FAILED_AT: format_timestamp(failed_at),
    }
    if message_id is not None and is_id(message_id):
        facts[H_DLQ_MESSAGE_ID] = message_id
    return facts


def encode_dead_letter(
    original: Encoded,
    *,
    reason: str,
    stream: str,
    sequence: int,
    deliveries: int,
    consumer_group: str,
    consumer: str | None = None,
    failed_at: datetime,
    raw_header_block: bytes | None = None,
) -> Encoded:
    """The dead-letter form of a received message, ready to publish.

    The dead-letter copy gets its own ``Nats-Msg-Id``
    (``dlq:{consumer}:{stream}:{seq}``, the consumer defaulting to the group), so a
    retried dead-letter publish is deduplicated while two consumers of one stream never
    share a dead letter; the original id stays in ``Deltran-Dlq-Message-Id``.

    It never carries the original's ``Nats-*`` headers. When ``raw_header_block`` is
    given (the caller could not decode the message, or its block is not exactly what
    its headers would give), or when the headers cannot be carried over
    (:func:`carries_over`), the dead letter is kept raw: its body is the original
    header block followed by the original body, and ``Deltran-Dlq-Raw-Header-Bytes``
    says where the block ends. Otherwise it carries the original headers and body.
    """
    headers = original.headers
    message_id = headers.get(H_MSG_ID)
    facts = _facts(
        original.subject,
        message_id,
        reason=reason,
        stream=stream,
        sequence=sequence,
        deliveries=deliveries,
        consumer_group=consumer_group,
        consumer=consumer,
        failed_at=failed_at,
    )
    subject = dead_letter_subject(original.subject)
    if raw_header_block is None and carries_over(headers):
        kept = {k: v for k, v in headers.items() if k != H_MSG_ID}
        return Encoded(subject, {**kept, **facts}, original.body)
    block = raw_header_block if raw_header_block is not None else header_lines(headers)
    facts[H_DLQ_RAW] = str(len(block))
    return Encoded(subject, facts, block + original.body)


def header_lines(headers: Mapping[str, str]) -> bytes:
    """``headers`` as a header block kept as data (``NATS/1.0``, one ``Name: value`` line
    each, CRLF separated), whatever they hold."""
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"NATS/1.0\r\n{lines}\r\n".encode("utf-8", "surrogatepass")


def read_header_lines(block: bytes) -> dict[str, str]:
    """A lenient reading of a header block kept as data (for display)."""
    headers: dict[str, str] = {}
    for line in block.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().decode("utf-8", "replace")] = value.strip().decode(
                "utf-8", "replace"
            )
    return headers


def is_raw(dead: Mapping[str, str]) -> bool:
    """Whether a dead letter with headers ``dead`` was kept raw."""
    return H_DLQ_RAW in dead


def raw_of(dead: Encoded, parse_block: BlockParser | None = None) -> RawMessage:
    """The original of a dead letter, as data (raw form: exactly as received).

    Raises:
        DecodeError: the raw header length is malformed.
    """
    headers = dead.headers
    subject = headers.get(H_DLQ_SUBJECT, "")
    text = headers.get(H_DLQ_RAW)
    if text is None:
        kept = {k: v for k, v in headers.items() if not k.lower().startswith(_DLQ_PREFIX)}
        kept.pop(H_MSG_ID, None)
        if H_DLQ_MESSAGE_ID in headers:
            kept[H_MSG_ID] = headers[H_DLQ_MESSAGE_ID]
        return RawMessage(subject, header_lines(kept), dead.body, kept)
    if not (text.isascii() and text.isdigit()) or int(text) > len(dead.body):
        raise DecodeError(H_DLQ_RAW, f"not a length within the body: {text!r}")
    size = int(text)
    block, body = dead.body[:size], dead.body[size:]
    parse = parse_block if parse_block is not None else read_header_lines
    return RawMessage(subject, block, body, dict(parse(block) or {}) if block else {})


def original_of(dead: Encoded, parse_block: BlockParser | None = None) -> Encoded:
    """The original message of a dead letter, as it was first published (for replay).

    Raises:
        DecodeError: a raw dead letter whose raw header length is malformed.
    """
    if is_raw(dead.headers):
        raw = raw_of(dead, parse_block)
        return Encoded(raw.subject, dict(raw.headers), raw.body)
    headers = {
        k: v
        for k, v in dead.headers.items()
        if not k.lower().startswith(_DLQ_PREFIX) and k != H_REPLAY_OF
    }
    headers[H_MSG_ID] = dead.headers.get(H_DLQ_MESSAGE_ID, headers.get(H_MSG_ID, ""))
    subject = dead.headers.get(H_DLQ_SUBJECT, "")
    return Encoded(subject, headers, dead.body)


def _subject_token(field: str, value: str) -> str:
    if _SUBJECT_TOKEN.fullmatch(value) is None or "." in value or value in ("*", ">"):
        raise ValidationError(field, value, "must be one subject token (printable, no '.')")
    return value


def replay_subject(stream: str, consumer: str) -> str:
    """``deltran.replay.{stream}.{consumer}``: where replays to ``consumer`` travel.

    Raises:
        ValidationError: ``stream`` or ``consumer`` is not one subject token.
    """
    stream = _subject_token("stream", stream)
    consumer = _subject_token("consumer", consumer)
    return f"{REPLAY_SUBJECT_PREFIX}.{stream}.{consumer}"


def replay_subjects(stream: str) -> str:
    """``deltran.replay.{stream}.>``: the replay subjects that ``stream`` captures."""
    return f"{REPLAY_SUBJECT_PREFIX}.{_subject_token('stream', stream)}.>"


def replay_of(
    dead: Encoded,
    dlq_sequence: int,
    count: int = 1,
    parse_block: BlockParser | None = None,
) -> Encoded:
    """What the ``count``-th replay of dead letter ``dlq_sequence`` publishes.

    The copy goes to ``deltran.replay.{stream}.{consumer}`` (the consumer that
    dead-lettered it, in the stream it came from), so no other group sees it. It keeps
    the original headers (no ``Nats-*`` but its id) and body, names the original
    subject in ``Deltran-Replay-Subject`` and the original id in ``Deltran-Replay-Of``,
    and has the id ``replay-{dlq_sequence}-{count}-{original id}``: a retried publish of
    one replay is deduplicated, a forced replay is a new message.

    Raises:
        DecodeError: the dead letter names no consumer or stream, or is malformed.
        ValidationError: the stream or consumer it names is not one subject token.
    """
    facts = dead.headers
    stream = facts.get(H_DLQ_STREAM, "")
    consumer = facts.get(H_DLQ_CONSUMER) or facts.get(H_DLQ_GROUP, "")
    if not stream or not consumer:
        raise DecodeError(H_DLQ_CONSUMER, "missing: no consumer to replay to")
    subject = replay_subject(stream, consumer)
    original = original_of(dead, parse_block)
    original_id = original.headers.get(H_MSG_ID, "")
    headers = {
        k: v
        for k, v in original.headers.items()
        if not k.lower().startswith(("nats-", _REPLAY_PREFIX, _DLQ_PREFIX))
    }
    headers[H_MSG_ID] = f"replay-{dlq_sequence}-{count}-{original_id}"[:128]
    headers[H_REPLAY_OF] = original_id
    headers[H_REPLAY_SUBJECT] = original.subject
    headers[H_REPLAY_DEAD_LETTER] = str(dlq_sequence)
    return Encoded(subject, headers, original.body)


def is_replay_subject(subject: str) -> bool:
    """Whether ``subject`` is a replay subject (``deltran.replay.>``)."""
    return subject.startswith(REPLAY_SUBJECT_PREFIX + ".")


def unwrap_replay(encoded: Encoded) -> Encoded:
    """The message a replay copy carries: its original subject and id (anything else
    is returned as it is). The codec then checks it like any delivery."""
    if not is_replay_subject(encoded.subject):
        return encoded
    headers = encoded.headers
    subject = headers.get(H_REPLAY_SUBJECT, encoded.subject)
    kept = {k: v for k, v in headers.items() if not k.lower().startswith(_REPLAY_PREFIX)}
    original_id = headers.get(H_REPLAY_OF)
    if original_id is not None:
        kept[H_MSG_ID] = original_id
    return Encoded(subject, kept, encoded.body)


def replay_marker_subject(dlq_sequence: int) -> str:
    """``deltran.dlq.replayed.{dlq_sequence}``: where the replays of a dead letter are
    recorded."""
    return f"{REPLAYED_SUBJECT_PREFIX}.{dlq_sequence}"


def encode_replay_marker(dlq_sequence: int, replay: Replay) -> Encoded:
    """The record, stored in the dead-letter stream, that a dead letter was replayed."""
    headers = {
        H_MSG_ID: f"replayed:{dlq_sequence}:{replay.count}",
        H_REPLAYED_DEAD_LETTER: str(dlq_sequence),
        H_REPLAYED_AT: format_timestamp(replay.replayed_at),
        H_REPLAYED_STREAM: replay.stream,
        H_REPLAYED_SEQUENCE: str(replay.sequence),
        H_REPLAYED_MESSAGE_ID: replay.message_id,
        H_REPLAYED_COUNT: str(replay.count),
    }
    return Encoded(replay_marker_subject(dlq_sequence), headers, b"")


def decode_replay_marker(headers: Mapping[str, str] | None) -> tuple[int, Replay] | None:
    """(dead-letter sequence, replay) of a replay marker; None if it is not one."""
    if not headers or H_REPLAYED_DEAD_LETTER not in headers:
        return None
    try:
        dlq_sequence = int(headers[H_REPLAYED_DEAD_LETTER])
        replay = Replay(
            replayed_at=parse_timestamp(headers.get(H_REPLAYED_AT, "")),
            stream=headers.get(H_REPLAYED_STREAM, ""),
            sequence=int(headers.get(H_REPLAYED_SEQUENCE, "")),
            message_id=headers.get(H_REPLAYED_MESSAGE_ID, ""),
            count=int(headers.get(H_REPLAYED_COUNT, "")),
        )
    except ValueError:
        return None
    return dlq_sequence, replay


def _int(text: str | None) -> int:
    return int(text) if text is not None and text.isascii() and text.isdigit() else 0


def decode_dead_letter(
    codec: WireCodec,
    subject: str,
    headers: Mapping[str, str] | None,
    body: bytes,
    dlq_sequence: int | None = None,
    *,
    parse_block: BlockParser | None = None,
    replays: tuple[Replay, ...] = (),
) -> DeadLetter:
    """Decode a message read from the dead-letter stream.

    Every dead letter decodes: one whose original cannot be decoded (or was kept raw)
    gets ``message`` None (unless the raw original decodes after all) and its original
    in ``raw``; malformed facts read as 0 (and the epoch for the time).

    Raises:
        DecodeError: it is not a dead letter (no ``Deltran-Dlq-Subject``).
    """
    if not headers or H_DLQ_SUBJECT not in headers:
        raise DecodeError(H_DLQ_SUBJECT, "missing: not a dead letter")
    dead = Encoded(subject, dict(headers), body)
    message: Message | None = None
    raw: RawMessage | None = None
    try:
        if is_raw(headers):
            raw = raw_of(dead, parse_block)
        original = original_of(dead, parse_block)
        message = codec.decode(*original)
    except DecodeError:
        if raw is None:
            try:
                raw = raw_of(dead, parse_block)
            except DecodeError:
                raw = RawMessage(headers.get(H_DLQ_SUBJECT, ""), b"", body, {})
    try:
        failed_at = parse_timestamp(headers.get(H_DLQ_FAILED_AT, ""))
    except ValueError:
        failed_at = _EPOCH
    return DeadLetter(
        message=message,
        reason=headers.get(H_DLQ_REASON, ""),
        subject=headers.get(H_DLQ_SUBJECT, ""),
        stream=headers.get(H_DLQ_STREAM, ""),
        sequence=_int(headers.get(H_DLQ_SEQUENCE)),
        deliveries=_int(headers.get(H_DLQ_DELIVERIES)),
        consumer_group=headers.get(H_DLQ_GROUP, ""),
        failed_at=failed_at,
        dlq_sequence=dlq_sequence,
        consumer=headers.get(H_DLQ_CONSUMER, headers.get(H_DLQ_GROUP, "")),
        raw=raw,
        replays=replays,
    )


def foreign_entry(
    subject: str,
    header_block: bytes,
    headers: Mapping[str, str] | None,
    body: bytes,
    dlq_sequence: int,
    stored_at: datetime,
) -> DeadLetter:
    """An entry of the dead-letter stream that no subscriber wrote (published there by
    something else), listed so that an operator sees it."""
    return DeadLetter(
        message=None,
        reason="not a dead letter: stored in the dead-letter stream by something else",
        subject=subject,
        stream="",
        sequence=0,
        deliveries=0,
        consumer_group="",
        failed_at=stored_at,
        dlq_sequence=dlq_sequence,
        raw=RawMessage(subject, header_block, body, dict(headers or {})),
    )


__all__ = [
    "H_DLQ_RAW",
    "REPLAYED_SUBJECT_PREFIX",
    "REPLAY_SUBJECT_PREFIX",
    "BlockParser",
    "DeadLetter",
    "RawMessage",
    "Replay",
    "carries_over",
    "dead_letter_subject",
    "decode_dead_letter",
    "decode_replay_marker",
    "encode_dead_letter",
    "encode_replay_marker",
    "foreign_entry",
    "header_lines",
    "is_raw",
    "is_replay_subject",
    "original_of",
    "raw_of",
    "read_header_lines",
    "replay_marker_subject",
    "replay_of",
    "replay_subject",
    "replay_subjects",
    "unwrap_replay",
]
