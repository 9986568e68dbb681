"""Connection settings of the NATS client, with the original crate's defaults."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from urllib.parse import urlparse

from message_bus.domain.errors import ValidationError
from message_bus.domain.redaction import REDACTED, redact_url

DEFAULT_URL = "nats://localhost:4222"
_SCHEMES = ("nats", "tls", "ws", "wss")
_TLS_SCHEMES = ("tls", "wss")
_WEBSOCKET_SCHEMES = ("ws", "wss")
_SECRET_FIELDS = ("password", "token", "nkey_seed")
_URL_SHAPE = "must be a URL like nats://host:4222 (scheme nats, tls, ws or wss)"
_DEFAULT_RECONNECT_BUFFER = 2 * 1024 * 1024


def _positive(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < math.inf:
        raise ValidationError(name, value, "must be a positive number of seconds")


def _text(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ValidationError(
            name, value, "must be a non-empty str or None", secret=name in _SECRET_FIELDS
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class NatsConfig:
    """How to reach NATS: servers, reconnection, credentials and TLS.

    Every field is validated on construction (:class:`ValidationError` names the
    first bad one). Secrets never show: ``repr`` and every error and log line render
    the URLs with their userinfo redacted and the password, token and seed as ``***``.

    TLS is required for every server, whatever the scheme of its URL, as soon as one
    URL is ``tls://`` or ``wss://`` or a ``tls_*`` file is set (:attr:`requires_tls`):
    the client then refuses a server that does not offer TLS before it sends anything,
    credentials included. ``ws://`` cannot carry TLS and is refused in such a list.

    Attributes:
        urls: Server URLs, each with its scheme (``nats://``, ``tls://``, ``ws://`` or
            ``wss://``); a cluster lists several, the client fails over between them.
            Websocket and plain URLs cannot be mixed. A URL may carry credentials
            (``nats://user:password@host``, ``nats://token@host``); they are redacted
            wherever the URL is shown.
        name: Connection name shown in the server's monitoring (not blank).
        max_reconnect_attempts: Reconnect attempts per server after a lost connection;
            ``None`` reconnects forever, ``0`` never reconnects.
        reconnect_delay: Backoff before the first reconnect attempt (seconds); it doubles
            with each failed attempt, up to ``reconnect_max_delay``, with jitter.
        reconnect_max_delay: Cap of the reconnect backoff (seconds).
        connection_timeout: Deadline of :meth:`NatsClient.connect`, all servers
            and attempts included (seconds): a server that accepts the connection and
            says nothing (not a NATS port) cannot hold it longer.
        retry_initial_connect: Whether :meth:`NatsClient.connect` keeps retrying
            until ``connection_timeout`` when no server can be reached; by default it
            tries each server once and fails as soon as all of them refused.
        enable_jetstream: Whether the client offers a JetStream context.
        api_timeout: Timeout of JetStream API calls: stream and consumer management
            (seconds).
        drain_timeout: How long :meth:`NatsClient.drain` waits for subscriptions to
            finish before closing (seconds).
        reconnect_buffer_size: Bytes of outgoing data buffered while reconnecting.
        user: User name for user/password authentication.
        password: Password of ``user``.
        token: Token authentication (exclusive with ``user``).
        nkey_seed: An NKEY seed (``SU...``) for NKEY authentication; needs the ``nkeys``
            package.
        creds_file: Path of a ``.creds`` file (user JWT and NKEY seed); needs ``nkeys``.
        tls_ca: PEM file of the CA that signed the server certificates.
        tls_cert: PEM file of this client's certificate (mutual TLS).
        tls_key: PEM file of the private key of ``tls_cert``.
    """

    urls: Sequence[str] = field(default_factory=lambda: (DEFAULT_URL,))
    name: str = "deltran"
    max_reconnect_attempts: int | None = None
    reconnect_delay: float = 2.0
    reconnect_max_delay: float = 30.0
    connection_timeout: float = 5.0
    retry_initial_connect: bool = False
    enable_jetstream: bool = True
    api_timeout: float = 5.0
    drain_timeout: float = 30.0
    reconnect_buffer_size: int = _DEFAULT_RECONNECT_BUFFER
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    nkey_seed: str | None = field(default=None, repr=False)
    creds_file: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.urls, str):
            object.__setattr__(self, "urls", (self.urls,))
        else:
            object.__setattr__(self, "urls", tuple(self.urls))
        self.validate()

    @property
    def uses_tls(self) -> bool:
        """Whether any TLS option is set (the client then builds its own SSL context)."""
        return any(v is not None for v in (self.tls_ca, self.tls_cert, self.tls_key))

    @property
    def requires_tls(self) -> bool:
        """Whether every connection must be TLS: a ``tls://`` or ``wss://`` URL, or a
        TLS option, is set."""
        return self.uses_tls or any(_scheme(url) in _TLS_SCHEMES for url in self.urls)

    def secrets(self) -> tuple[str, ...]:
        """The secret values of this config (password, token, NKEY seed, and the
        passwords and tokens in the URLs), for redacting free text."""
        values = [getattr(self, name) for name in _SECRET_FIELDS]
        for url in self.urls:
            userinfo = url.partition("://")[2].rpartition("@")[0]
            user, colon, password = userinfo.partition(":")
            values.append(password if colon else user)
        return tuple(v for v in values if v)

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "urls":
                shown.append(f"urls={tuple(redact_url(u) for u in value)!r}")
            elif f.name in _SECRET_FIELDS:
                shown.append(f"{f.name}={REDACTED if value is not None else None!r}")
            else:
                shown.append(f"{f.name}={value!r}")
        return f"NatsConfig({', '.join(shown)})"

    def validate(self) -> None:
        """Raise :class:`ValidationError` naming the first bad field."""
        if not self.urls:
            raise ValidationError("urls", self.urls, "needs at least one URL")
        for url in self.urls:
            _check_url(url)
        self._validate_schemes()
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValidationError("name", self.name, "must be a non-blank str")
        attempts = self.max_reconnect_attempts
        if attempts is not None and (
            isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0
        ):
            raise ValidationError(
                "max_reconnect_attempts", attempts, "must be None (forever) or an int >= 0"
            )
        for name in (
            "reconnect_delay",
            "reconnect_max_delay",
            "connection_timeout",
            "api_timeout",
            "drain_timeout",
        ):
            _positive(name, getattr(self, name))
        if self.reconnect_max_delay < self.reconnect_delay:
            raise ValidationError(
                "reconnect_max_delay", self.reconnect_max_delay, "must be >= reconnect_delay"
            )
        size = self.reconnect_buffer_size
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValidationError("reconnect_buffer_size", size, "must be an int >= 0 (bytes)")
        for name in ("enable_jetstream", "retry_initial_connect"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(name, getattr(self, name), "must be a bool")
        for name in (
            "user",
            "password",
            "token",
            "nkey_seed",
            "creds_file",
            "tls_ca",
            "tls_cert",
            "tls_key",
        ):
            _text(name, getattr(self, name))
        self._validate_credentials()

    def _validate_schemes(self) -> None:
        websocket = [u for u in self.urls if _scheme(u) in _WEBSOCKET_SCHEMES]
        if websocket and len(websocket) != len(self.urls):
            plain = next(u for u in self.urls if u not in websocket)
            raise ValidationError(
                "urls", plain, f"cannot be mixed with websocket URLs ({redact_url(websocket[0])})"
            )
        if self.requires_tls:
            for url in self.urls:
                if _scheme(url) == "ws":
                    raise ValidationError(
                        "urls", url, "cannot carry TLS, which is required (use wss://)"
                    )

    def _validate_credentials(self) -> None:
        # A half pair names the half that is set: that is the value its author can fix.
        if self.user is not None and self.password is None:
            raise ValidationError("user", self.user, "needs password")
        if self.password is not None and self.user is None:
            raise ValidationError("password", "***", "needs user")
        methods = [
            name
            for name, value in (
                ("user", self.user),
                ("token", self.token),
                ("nkey_seed", self.nkey_seed),
                ("creds_file", self.creds_file),
            )
            if value is not None
        ]
        if len(methods) > 1:
            raise ValidationError(
                methods[1], "***", f"use one authentication method, not {' and '.join(methods)}"
            )
        if self.tls_cert is not None and self.tls_key is None:
            raise ValidationError("tls_cert", self.tls_cert, "needs tls_key")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValidationError("tls_key", self.tls_key, "needs tls_cert")


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower()


def _check_url(url: object) -> None:
    """Raise unless ``url`` names its scheme, a host and, if any, a valid port."""
    if not isinstance(url, str) or not url:
        raise ValidationError("urls", url, "must be a non-empty str")
    if any(c in url for c in " \t\r\n"):
        raise ValidationError("urls", url, "must not contain whitespace")
    try:
        parsed = urlparse(url)
        port = parsed.port
    except ValueError:
        # The parser's own message can quote a part of the URL (a password taken for
        # a port): say what is wrong without it.
        raise ValidationError(
            "urls", url, "is not a URL: its host or port cannot be read"
        ) from None
    if "://" not in url or parsed.scheme not in _SCHEMES:
        raise ValidationError("urls", url, _URL_SHAPE)
    if not parsed.hostname:
        raise ValidationError("urls", url, "has no host")
    if port is not None and not 0 < port < 65536:
        raise ValidationError("urls", url, "port must be in 1..65535")


__all__ = ["DEFAULT_URL", "NatsConfig"]
