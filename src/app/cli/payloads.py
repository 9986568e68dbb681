"""Payloads given on the command line: JSON inline, from ``@FILE`` or stdin, typed and checked."""

from __future__ import annotations

import json
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, NoReturn

from message_bus.domain.catalog import MessageType
from message_bus.domain.partition import PartitionKey
from message_bus.domain.payload_schema import convert_payload
from message_bus.domain.payloads import PaymentInstruction

from ..service import validate_instruction
from .errors import CliError

__all__ = ["read_payload", "typed_payload"]


def read_payload(text: str, *, exact_decimals: bool = False) -> Any:
    """The JSON payload given inline, as ``@FILE`` or as ``-`` (stdin).

    Args:
        text: the payload argument.
        exact_decimals: numbers with a fraction become ``Decimal`` (exactly as typed),
            for the typed payloads that carry money.

    Raises:
        CliError: the file cannot be read, or the text is not JSON (``NaN`` and
            ``Infinity`` are not JSON here either).
    """
    if text == "-":
        raw = sys.stdin.read()
        where = "stdin"
    elif text.startswith("@"):
        try:
            raw = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"cannot read payload file {text[1:]!r}: {exc.strerror}") from None
        where = text[1:]
    else:
        raw, where = text, "payload"
    try:
        if exact_decimals:
            return json.loads(raw, parse_float=Decimal, parse_constant=_no_constant)
        return json.loads(raw, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as exc:
        raise CliError(f"{where} is not JSON: {exc}") from None


def _no_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in a payload")


def typed_payload(
    text: str, message_type: MessageType, key: PartitionKey, *, raw: bool = False
) -> Any:
    """The payload to publish: typed and checked against the type's Struct with the
    publishers' own check (:func:`~message_bus.domain.payload_schema.convert_payload`).

    Args:
        text: the payload argument (see :func:`read_payload`).
        message_type: the type published; its ``payload_type`` is the schema (every
            built-in type has one; a registered type may have none).
        key: the partition key; a payment instruction's corridor defaults to its corridor.
        raw: skip the schema: publish the JSON as read.

    Raises:
        CliError: see :func:`read_payload`.
        ValidationError: the payload does not fit its type's schema.
    """
    schema = None if raw else message_type.payload_type
    payload = read_payload(text, exact_decimals=schema is not None)
    if schema is None:
        return payload
    if schema is PaymentInstruction:
        return validate_instruction(payload, getattr(key, "corridor_id", None))
    return convert_payload(payload, schema)
