"""Dead letters: a message that could not be processed, with why and where it came from."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from .catalog import DEAD_LETTER_SUBJECT_PREFIX
from .codec import H_MSG_ID, Encoded, WireCodec, format_timestamp, parse_timestamp
from .errors import DecodeError
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
H_REPLAY_OF = "Deltran-Replay-Of"
_DLQ_HEADERS = (
    H_DLQ_REASON,
    H_DLQ_SUBJECT,
    H_DLQ_STREAM,
    H_DLQ_SEQUENCE,
    H_DLQ_DELIVERIES,
    H_DLQ_GROUP,
    H_DLQ_CONSUMER,
    H_DLQ_MESSAGE_ID,
    H_DLQ_FAILED_AT,
)
_MAX_REASON = 512


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A dead-lettered message and the facts about its failure.

    Attributes:
        message: the original message, decoded.
        reason: why it was dead-lettered (handler's reason or "max deliveries ...").
        subject: the subject it was originally published to.
        stream: the stream it came from.
        sequence: its sequence in that stream.
        deliveries: how many times it was delivered.
        consumer_group: the group that gave up on it.
        failed_at: when it was dead-lettered (UTC).
        dlq_sequence: its sequence in the dead-letter stream, once stored.
        consumer: the durable consumer (durable name, group, filter) that gave up.
    """

    message: Message
    reason: str
    subject: str
    stream: str
    sequence: int
    deliveries: int
    consumer_group: str
    failed_at: datetime
    dlq_sequence: int | None = None
    consumer: str = ""


def _clean(text: str) -> str:
    """Header-safe text: no CR/LF/NUL, bounded length."""
    return " ".join(text.replace("\x00", " ").split())[:_MAX_REASON] or "-"


def dead_letter_subject(original_subject: str) -> str:
    """``deltran.dlq.{original subject without 'deltran.'}``."""
    return f"{DEAD_LETTER_SUBJECT_PREFIX}.{original_subject.removeprefix('deltran.')}"


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
) -> Encoded:
    """The dead-letter form of a received message, ready to publish.

    The dead-letter copy gets its own ``Nats-Msg-Id``
    (``dlq:{consumer}:{stream}:{seq}``, the consumer defaulting to the group), so a
    retried dead-letter publish is deduplicated while two consumers of one stream never
    share a dead letter; the original id stays in ``Deltran-Dlq-Message-Id``.
    """
    consumer = consumer or consumer_group
    headers = dict(original.headers)
    headers[H_DLQ_MESSAGE_ID] = headers.get(H_MSG_ID, "")
    headers[H_MSG_ID] = f"dlq:{consumer}:{stream}:{sequence}"
    headers[H_DLQ_REASON] = _clean(reason)
    headers[H_DLQ_SUBJECT] = original.subject
    headers[H_DLQ_STREAM] = stream
    headers[H_DLQ_SEQUENCE] = str(sequence)
    headers[H_DLQ_DELIVERIES] = str(deliveries)
    headers[H_DLQ_GROUP] = consumer_group
    headers[H_DLQ_CONSUMER] = consumer
    headers[H_DLQ_FAILED_AT] = format_timestamp(failed_at)
    return Encoded(dead_letter_subject(original.subject), headers, original.body)


def original_of(dead: Encoded) -> Encoded:
    """The original message of a dead letter, as it was first published (for replay)."""
    headers = {k: v for k, v in dead.headers.items() if k not in _DLQ_HEADERS and k != H_REPLAY_OF}
    headers[H_MSG_ID] = dead.headers.get(H_DLQ_MESSAGE_ID, headers.get(H_MSG_ID, ""))
    subject = dead.headers.get(H_DLQ_SUBJECT, "")
    return Encoded(subject, headers, dead.body)


def replay_of(dead: Encoded, dlq_sequence: int) -> Encoded:
    """What replaying dead letter ``dlq_sequence`` publishes: the original subject, headers
    and body under the id ``replay-{dlq_sequence}-{original id}``.

    The original id was seen by the stream when it was first published, so republishing
    it inside the duplicate window would be dropped as a duplicate; a derived id makes
    the replay a real delivery, while repeating the same replay within the window is
    still deduplicated. The original id stays readable in ``Deltran-Replay-Of``.
    """
    original = original_of(dead)
    headers = dict(original.headers)
    original_id = headers.get(H_MSG_ID, "")
    headers[H_REPLAY_OF] = original_id
    headers[H_MSG_ID] = f"replay-{dlq_sequence}-{original_id}"[:128]
    return Encoded(original.subject, headers, original.body)


def decode_dead_letter(
    codec: WireCodec,
    subject: str,
    headers: Mapping[str, str] | None,
    body: bytes,
    dlq_sequence: int | None = None,
) -> DeadLetter:
    """Decode a message read from the dead-letter stream.

    Raises:
        DecodeError: a dead-letter header is missing or malformed, or the original is.
    """
    if not headers or H_DLQ_SUBJECT not in headers:
        raise DecodeError(H_DLQ_SUBJECT, "missing: not a dead letter")
    original = original_of(Encoded(subject, dict(headers), body))
    message = codec.decode(*original)
    try:
        sequence = int(headers.get(H_DLQ_SEQUENCE, ""))
        deliveries = int(headers.get(H_DLQ_DELIVERIES, ""))
        failed_at = parse_timestamp(headers.get(H_DLQ_FAILED_AT, ""))
    except ValueError as exc:
        raise DecodeError("Deltran-Dlq-*", str(exc)) from None
    return DeadLetter(
        message=message,
        reason=headers.get(H_DLQ_REASON, ""),
        subject=original.subject,
        stream=headers.get(H_DLQ_STREAM, ""),
        sequence=sequence,
        deliveries=deliveries,
        consumer_group=headers.get(H_DLQ_GROUP, ""),
        failed_at=failed_at,
        dlq_sequence=dlq_sequence,
        consumer=headers.get(H_DLQ_CONSUMER, headers.get(H_DLQ_GROUP, "")),
    )
