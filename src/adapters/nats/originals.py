"""What a dead letter records of a stored message: its original form, kept raw when it must be."""

from __future__ import annotations

from message_bus.domain.codec import Encoded, WireCodec
from message_bus.domain.dead_letter import unwrap_replay
from message_bus.domain.errors import DecodeError, ValidationError

from .headers import header_block, headers_of


def original_of(
    codec: WireCodec, subject: bytes, block: bytes | None, body: bytes
) -> tuple[Encoded, bytes | None]:
    """What a dead letter of a message read as (``subject``, header ``block``, ``body``)
    records: the message (a replay copy's original subject and id), and its header block
    as received when it must be kept raw.

    It is kept raw unless it decodes and its header block is exactly what its headers
    give back (nothing that a header dict cannot hold: a NUL, a lone LF, a repeated
    name...), so nothing of a foreign message is lost.
    """
    headers = headers_of(block) or {}
    original = unwrap_replay(Encoded(subject.decode("utf-8", "replace"), headers, body))
    try:
        codec.decode(*original)
        exact = block is None or header_block(headers) == block
    except (DecodeError, ValidationError):
        exact = False
    if exact:
        return original, None
    return original, block or b""


__all__ = ["original_of"]
