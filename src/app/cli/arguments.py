"""Argument types: command-line text to a typed value, or an ``ArgumentTypeError``."""

from __future__ import annotations

import argparse

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import ValidationError
from message_bus.domain.partition import PartitionKey

__all__ = [
    "comma_list",
    "header",
    "parse_key",
    "parse_message_type",
    "port_number",
    "positive_int",
    "seconds",
]


def _type_names() -> dict[str, MessageType]:
    """Every spelling of every type of the catalog, registered ones included."""
    names: dict[str, MessageType] = {}
    for message_type in MessageType:
        names[message_type.value.lower()] = message_type
        names[message_type.name.lower()] = message_type
        names[message_type.type_subject] = message_type
        names[message_type.name.lower().replace("_", "-")] = message_type
    return names


def parse_message_type(text: str) -> MessageType:
    """``PaymentInstruction``, ``PAYMENT_INSTRUCTION``, ``payment-instruction`` or
    ``payment.instruction``."""
    found = _type_names().get(text.strip().lower())
    if found is None:
        names = ", ".join(t.value for t in MessageType)
        raise argparse.ArgumentTypeError(f"unknown message type {text!r} (one of: {names})")
    return found


def parse_key(text: str) -> PartitionKey:
    """A partition key in its subject form: ``corridor.USD-EUR``, ``bank.BANKGB2L``,
    ``corridor.USD-EUR.bank.BANKGB2L`` or ``broadcast``."""
    try:
        return PartitionKey.parse(text)
    except ValidationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """An integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def port_number(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not in 0..65535")
    return value


def seconds(text: str) -> float:
    """A finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0 seconds")
    return value


def comma_list(text: str) -> tuple[str, ...]:
    """The comma separated items of ``text``, stripped, empty ones left out."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


def header(text: str) -> tuple[str, str]:
    """A ``NAME=VALUE`` header as ``(name, value)``; the value may be empty."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=VALUE")
    return name, value
