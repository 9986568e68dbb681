"""The one payload check of the bus: a payload against its message type's Struct."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

from .catalog import MessageType
from .errors import ValidationError

__all__ = ["check_payload", "convert_payload"]

S = TypeVar("S", bound=msgspec.Struct)

_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_]*)|\[(-?\d+)\]|\[(?:'([^']*)'|\"([^\"]*)\")\]")
_MISSING = object()


def check_payload(message_type: MessageType, payload: Any) -> None:
    """Raise :class:`ValidationError` unless ``payload`` fits ``message_type``'s Struct.

    A payload that is an instance of the Struct passed its checks when it was built and
    is not checked again; anything else (a dict, ...) is converted once. Types
    registered without a Struct take any JSON payload.

    Raises:
        ValidationError: ``field`` is the offending field's path (``payload.amount``,
            ``payload.positions['BANKGB2L']``), ``value`` its value.
    """
    schema = message_type.payload_type
    if schema is None or type(payload) is schema:
        return
    if isinstance(payload, msgspec.Struct):
        if isinstance(payload, schema):
            return
        raise ValidationError(
            "payload",
            payload,
            f"must be a {schema.__name__} (or a dict of its fields) for "
            f"{message_type.value}, got {type(payload).__name__}",
        )
    convert_payload(payload, schema)


def convert_payload(payload: Any, schema: type[S]) -> S:
    """``payload`` converted to ``schema`` (numbers and strings are coerced where
    lossless, e.g. ``"100.50"`` to ``Decimal``).

    Raises:
        ValidationError: see :func:`check_payload`.
    """
    if isinstance(payload, schema):
        return payload
    try:
        return msgspec.convert(payload, schema, strict=False)
    except msgspec.ValidationError as exc:
        cause = exc.__cause__
        if isinstance(cause, ValidationError):  # raised by the Struct's own checks
            raise ValidationError(f"payload.{cause.field}", cause.value, cause.reason) from None
        match = _AT.match(str(exc))
        assert match is not None  # the pattern matches any text
        path = match.group("path")
        if path is None:
            raise ValidationError("payload", payload, str(exc)) from None
        raise ValidationError(
            f"payload{path}", _value_at(payload, path), match.group("reason")
        ) from None


def _value_at(payload: Any, path: str) -> Any:
    """The value at a msgspec path (``.a[0]['k']``); None if it is missing."""
    value = payload
    for step in _STEP.finditer(path):
        name, index, key1, key2 = step.groups()
        key: Any = name if name is not None else key1 if key1 is not None else key2
        if index is not None:
            key = int(index)
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value
