"""Merges a port's configured settings with the fields a caller overrides."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from message_bus.domain.errors import ValidationError

__all__ = ["merge_config"]

C = TypeVar("C")


def merge_config(configured: C, config: C | None = None, **overrides: Any) -> C:
    """``configured`` with the fields a caller chose, the other fields kept.

    Args:
        configured: the settings' config (the TOML file, ``DELTRAN_*`` variables).
        config: a whole config object; the fields where it differs from the class's
            defaults override ``configured`` (a field left at its default keeps the
            configured value: pass it in ``overrides`` to force it).
        overrides: single fields by name; they win over ``config``.

    Raises:
        ValidationError: a name is not a field of the config, or a value is invalid.
    """
    cls = type(configured)
    if not dataclasses.is_dataclass(configured) or isinstance(configured, type):
        raise TypeError(f"cannot merge into {cls.__name__}: not a dataclass instance")
    fields = {f.name: f for f in dataclasses.fields(configured) if f.init}
    changes: dict[str, Any] = {}
    if config is not None:
        if type(config) is not cls:
            raise ValidationError("config", config, f"must be a {cls.__name__}")
        defaults = cls()
        for name in fields:
            value = getattr(config, name)
            if value != getattr(defaults, name):
                changes[name] = value
    for name, value in overrides.items():
        if name not in fields:
            raise ValidationError(name, value, f"is not a {cls.__name__} field")
        changes[name] = value
    if not changes:
        return configured
    return dataclasses.replace(configured, **changes)
