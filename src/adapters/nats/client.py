"""The NATS connection: connect, reconnect with backoff, observable status, drain, close."""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import re
import ssl
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.client import Client, Server
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from message_bus.domain.errors import BusConnectionError, ClosedError
from message_bus.domain.redaction import redact_text, redact_url, redact_urls

from .config import NatsConfig
from .headers import raw_block_of
from .internals import (
    Connection,
    NotNatsServerError,
    RawHandler,
    TlsNotOfferedError,
    UnsupportedClientError,
    check_internals,
    is_live,
    ordered_flush,
    route_raw,
)

log = logging.getLogger("message_bus.nats")

_DISCARD_TIMEOUT = 0.5
_PERMISSION_DENIED = re.compile(r"permissions violation for publish to \"?([^\"'\s]+)", re.I)


class ConnectionStatus(enum.StrEnum):
    """The state of the connection, as exported in ``nats_connection_status{status}``."""

    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


StatusListener = Callable[[ConnectionStatus], None]
"""Called on every status change, on the event loop; must not block."""


def reconnect_backoff(
    attempt: int, base: float, cap: float, rng: Callable[[], float] = random.random
) -> float:
    """Delay before reconnect attempt ``attempt`` (0-based) of one outage.

    Exponential (``base * 2**attempt``, capped at ``cap``) with "equal jitter": the
    delay is uniformly drawn from the upper half of that ceiling, so clients that lost
    the same server spread their reconnects without ever hammering it.
    """
    ceiling = float(min(cap, base * 2.0 ** min(attempt, 62)))
    return ceiling * (0.5 + 0.5 * rng())


class _FatalConnectError(Exception):
    """Raised from the error callback to stop an initial connect that cannot succeed."""

    def __init__(self, cause: BaseException) -> None:
        self.cause = cause
        super().__init__(str(cause))


def _is_auth_error(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, nats.errors.AuthorizationError) or (
        "authorization violation" in text or "authentication" in text
    )


def _describe(error: BaseException) -> str:
    """What went wrong, in a few words (callers redact it, see ``NatsClient._redact``)."""
    if isinstance(error, ssl.SSLError):
        return getattr(error, "verify_message", None) or error.reason or str(error)
    text = str(error).strip()
    return text.removeprefix("nats: ").strip("'") or type(error).__name__


def _hostport(netloc: str) -> str:
    """``host:port`` of a URL's netloc, without its userinfo."""
    return netloc.rpartition("@")[2]


class NatsClient:
    """One NATS connection shared by the publishers and subscribers built on it.

    ``connect`` either returns connected or raises :class:`BusConnectionError` with a
    clear cause (unreachable, not a NATS server, credentials rejected, TLS failure or
    TLS not offered) within ``connection_timeout``; unless
    ``retry_initial_connect`` is set, it tries each server once and fails as soon as
    every one refused. When the config requires TLS, nothing (credentials included)
    is sent to a server before the connection is TLS. No message or log line of the
    client shows a secret: URLs are redacted, and so are the config's secret values.

    Once connected, a lost connection is re-established in the
    background (forever by default), with exponential backoff and jitter chosen by
    :func:`reconnect_backoff` through nats-py's ``reconnect_to_server_handler``; while
    reconnecting, nats-py buffers up to ``reconnect_buffer_size`` bytes of outgoing
    data. Status changes are reported to the listeners registered with
    :meth:`on_status`, which is how telemetry exports ``nats_connection_status``
    without this adapter knowing about metrics.

    Usable as an async context manager (connect on enter, close on exit).
    """

    def __init__(self, config: NatsConfig | None = None) -> None:
        self.config = config if config is not None else NatsConfig()
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._status = ConnectionStatus.DISCONNECTED
        self._listeners: list[StatusListener] = []
        self._permission_listeners: list[Callable[[str], None]] = []
        self._connected = asyncio.Event()
        self._connect_lock = asyncio.Lock()
        self._connecting = False
        self._closing = False
        self._closed = False
        self._reconnect_attempt = 0
        self._server_netloc: str | None = None
        self._last_error: BaseException | None = None
        self._connect_failures = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def connect(self) -> None:
        """Connects to the first reachable server of ``config.urls``; idempotent.

        Raises:
            BusConnectionError: No server could be reached within
                ``connection_timeout``, the server rejected the credentials, or the
                TLS handshake failed (the message says which).
            ClosedError: The client was closed.
        """
        async with self._connect_lock:
            if self._closed:
                raise ClosedError("the NATS client was closed")
            if self._nc is not None:
                return
            nc = Connection()
            try:
                check_internals(nc)
            except UnsupportedClientError as exc:
                raise BusConnectionError(str(exc)) from exc
            nc.require_tls = self.config.requires_tls
            self._connecting = True
            self._last_error = None
            self._connect_failures = 0
            try:
                async with asyncio.timeout(self.config.connection_timeout):
                    await nc.connect(**self._connect_options())
            except _FatalConnectError as exc:
                await _discard(nc)
                raise BusConnectionError(self._explain(exc.cause)) from exc.cause
            except TimeoutError as exc:
                cause: BaseException = self._last_error or exc
                if nc.awaiting_info:  # the deadline expired while a peer said nothing
                    cause = NotNatsServerError(
                        nc.server_url,
                        "it accepted the connection but sent no NATS INFO within "
                        f"{self.config.connection_timeout:g}s (is it the HTTP monitoring "
                        "port, or another service?)",
                    )
                await _discard(nc)
                if isinstance(cause, NotNatsServerError):
                    raise BusConnectionError(self._explain(cause)) from exc
                raise BusConnectionError(
                    f"NATS unreachable at {redact_urls(self.config.urls)} within "
                    f"{self.config.connection_timeout:g}s: {self._redact(_describe(cause))}"
                ) from cause
            except ImportError as exc:
                await _discard(nc)
                raise BusConnectionError(
                    f"NKEY and creds-file authentication need the 'nkeys' package: {exc}"
                ) from exc
            except (OSError, nats.errors.Error) as exc:
                await _discard(nc)
                raise BusConnectionError(self._explain(exc)) from exc
            finally:
                self._connecting = False
            self._nc = nc
            if self.config.enable_jetstream:
                self._js = nc.jetstream(timeout=self.config.api_timeout)
            self._remember_server()
            self._set_status(ConnectionStatus.CONNECTED)
            log.info("connected to NATS at %s", self._server_netloc)

    def _redact(self, text: str) -> str:
        """``text`` without any URL userinfo or secret value of the config."""
        return redact_text(text, self.config.secrets())

    async def drain(self) -> None:
        """Lets every subscription finish its buffered messages, flushes, then closes.

        Idempotent; after it the client is closed.
        """
        nc = self._nc
        self._closing = True
        if nc is None or nc.is_closed:
            await self.close()
            return
        try:
            await nc.drain()
        except (nats.errors.Error, OSError) as exc:
            log.warning("NATS drain failed (%s); closing", self._redact(_describe(exc)))
        await self.close()

    async def close(self) -> None:
        """Closes the connection at once (buffered outgoing data is flushed); idempotent."""
        self._closing = True
        self._closed = True
        nc, self._nc = self._nc, None
        self._js = None
        if nc is not None and not nc.is_closed:
            try:
                await nc.close()
            except (nats.errors.Error, OSError) as exc:
                # The connection died as it closed (the server went away): it is closed.
                log.debug("NATS close: %s", self._redact(_describe(exc)))
        self._set_status(ConnectionStatus.CLOSED)

    async def flush(self, timeout: float = 5.0) -> None:
        """Waits until the server has processed everything written so far (PING/PONG).

        Raises:
            BusConnectionError: Not connected, or no answer within ``timeout``.
            ClosedError: The client was closed.
        """
        nc = self.connection
        try:
            await ordered_flush(nc, timeout)
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            raise ClosedError("the NATS connection is closed") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise BusConnectionError(
                f"NATS did not confirm the flush: {self._redact(_describe(exc))}"
            ) from exc

    async def __aenter__(self) -> NatsClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- state -----------------------------------------------------------------------------

    @property
    def status(self) -> ConnectionStatus:
        """The current connection status."""
        return self._status

    @property
    def is_connected(self) -> bool:
        """Whether the connection is up right now."""
        return self._nc is not None and self._nc.is_connected

    @property
    def is_closed(self) -> bool:
        """Whether :meth:`close` (or :meth:`drain`) was called."""
        return self._closed

    @property
    def connected_url(self) -> str | None:
        """``host:port`` of the server currently connected to."""
        return self._server_netloc if self.is_connected else None

    @property
    def connection(self) -> Client:
        """The underlying nats-py connection (for adapters and tests).

        Raises:
            ClosedError: The client was closed.
            BusConnectionError: :meth:`connect` was not called.
        """
        if self._nc is None:
            if self._closed:
                raise ClosedError("the NATS client was closed")
            raise BusConnectionError("the NATS client is not connected; call connect() first")
        return self._nc

    @property
    def live_connection(self) -> Client | None:
        """The nats-py connection if it is up right now (not reconnecting, draining or
        closed), else None; for hot paths that write only to a live connection."""
        nc = self._nc
        return nc if is_live(nc) else None

    @property
    def jetstream(self) -> JetStreamContext:
        """The JetStream context of the connection.

        Raises:
            BusConnectionError: Not connected, or JetStream is disabled in the config.
        """
        nc = self.connection
        if self._js is None:
            raise BusConnectionError("JetStream is disabled (NatsConfig.enable_jetstream)")
        del nc
        return self._js

    def on_status(self, listener: StatusListener) -> Callable[[], None]:
        """Calls ``listener(status)`` on every status change, starting with the current one.

        Returns:
            A function that removes the listener.
        """
        self._listeners.append(listener)
        self._notify(listener, self._status)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def on_permission_denied(self, listener: Callable[[str], None]) -> Callable[[], None]:
        """Calls ``listener(subject)`` when the server refuses a publish to ``subject``.

        The server reports the subject lower-cased. Returns a remover.
        """
        self._permission_listeners.append(listener)

        def remove() -> None:
            if listener in self._permission_listeners:
                self._permission_listeners.remove(listener)

        return remove

    async def wait_connected(self, timeout: float) -> bool:
        """Waits up to ``timeout`` seconds for the connection to be up.

        Returns:
            Whether it is connected.

        Raises:
            ClosedError: The client is (or becomes) closed.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self._closed or (self._nc is not None and self._nc.is_closed):
                raise ClosedError("the NATS connection is closed")
            if self.is_connected:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._connected.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self._connected.wait()
            except TimeoutError:
                return self.is_connected

    async def subscribe_raw(
        self,
        subject: str,
        handler: RawHandler,
        *,
        queue: str = "",
        pending_msgs_limit: int = 1024 * 1024,
        pending_bytes_limit: int = 256 * 1024 * 1024,
    ) -> Subscription:
        """Subscribes ``handler`` to ``subject`` on a raw route (see :mod:`.internals`),
        in the queue group ``queue`` if given.

        The handler gets every message as it is read, in order, on the event loop.
        Unsubscribing (or draining) the returned subscription removes the route.
        """
        nc = self.connection

        async def fallback(msg: Msg) -> None:  # a message nats-py dispatched itself
            handler(msg.subject.encode(), msg.reply.encode(), msg.data, raw_block_of(msg.headers))

        sub = await nc.subscribe(
            subject,
            queue=queue,
            cb=fallback,
            pending_msgs_limit=pending_msgs_limit,
            pending_bytes_limit=pending_bytes_limit,
        )
        route_raw(nc, sub, handler)
        return sub

    # -- nats-py callbacks -------------------------------------------------------------------

    def _connect_options(self) -> dict[str, Any]:
        config = self.config
        options: dict[str, Any] = {
            "servers": list(config.urls),
            "name": config.name,
            # Per attempt; connect() bounds all attempts by connection_timeout.
            "connect_timeout": (
                config.connection_timeout
                if len(config.urls) == 1
                else max(1.0, config.connection_timeout / len(config.urls))
            ),
            "reconnect_time_wait": config.reconnect_delay,
            "max_reconnect_attempts": (
                -1 if config.max_reconnect_attempts is None else config.max_reconnect_attempts
            ),
            "allow_reconnect": config.max_reconnect_attempts != 0,
            "drain_timeout": config.drain_timeout,
            "pending_size": config.reconnect_buffer_size,
            # Bounds a write that waits for the outgoing buffer to drain (a stalled
            # server would otherwise hold it forever).
            "flush_timeout": config.connection_timeout,
            "error_cb": self._on_error,
            "disconnected_cb": self._on_disconnected,
            "reconnected_cb": self._on_reconnected,
            "closed_cb": self._on_closed,
            "lame_duck_mode_cb": self._on_lame_duck,
            "reconnect_to_server_handler": self._next_server,
        }
        if config.user is not None:
            options["user"] = config.user
            options["password"] = config.password
        if config.token is not None:
            options["token"] = config.token
        if config.nkey_seed is not None:
            options["nkeys_seed_str"] = config.nkey_seed
        if config.creds_file is not None:
            options["user_credentials"] = config.creds_file
        if config.uses_tls:
            context = ssl.create_default_context(cafile=config.tls_ca)
            if config.tls_cert is not None:
                context.load_cert_chain(config.tls_cert, config.tls_key)
            options["tls"] = context
        return options

    async def _on_error(self, error: Exception) -> None:
        self._last_error = error
        if self._connecting:
            # One call per failed attempt. Raising here makes nats-py's connect() stop
            # retrying and raise it: at once when retrying cannot help, else once every
            # server was tried, unless retrying the initial connect was asked for.
            self._connect_failures += 1
            if (
                _is_auth_error(error)
                or isinstance(error, ssl.SSLError | TlsNotOfferedError)
                or (
                    not self.config.retry_initial_connect
                    and self._connect_failures >= len(self.config.urls)
                )
            ):
                raise _FatalConnectError(error)
        text = str(error)
        match = _PERMISSION_DENIED.search(text)
        if match is not None:
            subject = match.group(1)
            log.error("NATS refused a publish to %s: permission denied", subject)
            for listener in list(self._permission_listeners):
                listener(subject)
            return
        if self._connecting:
            log.debug("NATS connect attempt failed: %s", self._redact(_describe(error)))
        else:
            log.warning("NATS connection error: %s", self._redact(_describe(error)))

    async def _on_disconnected(self) -> None:
        self._connected.clear()
        if self._nc is not None and not self._closing:
            log.warning("disconnected from NATS at %s", self._server_netloc)
            self._set_status(ConnectionStatus.DISCONNECTED)

    async def _on_reconnected(self) -> None:
        self._reconnect_attempt = 0
        self._remember_server()
        log.info("reconnected to NATS at %s", self._server_netloc)
        self._set_status(ConnectionStatus.CONNECTED)

    async def _on_closed(self) -> None:
        if self._nc is not None:  # else: a failed connect attempt, or close() reports it
            self._set_status(ConnectionStatus.CLOSED)

    async def _on_lame_duck(self) -> None:
        log.warning("NATS server %s entered lame duck mode", self._server_netloc)

    def _next_server(
        self, servers: list[Server], server_info: dict[str, Any]
    ) -> tuple[Server | None, float]:
        """nats-py's reconnect hook: which server to try next, and after how long."""
        attempt = self._reconnect_attempt
        self._reconnect_attempt += 1
        self._set_status(ConnectionStatus.RECONNECTING)
        if attempt == 0:
            # Fail over to another, healthy-looking server at once.
            others = [
                s
                for s in servers
                if s.reconnects == 0 and _hostport(s.uri.netloc) != self._server_netloc
            ]
            if others:
                return others[0], 0.0
        server = min(servers, key=lambda s: s.reconnects)
        delay = reconnect_backoff(
            attempt, self.config.reconnect_delay, self.config.reconnect_max_delay
        )
        log.debug(
            "reconnect attempt %d to %s in %.3fs",
            attempt + 1,
            redact_url(server.uri.geturl()),
            delay,
        )
        return server, delay

    # -- helpers ------------------------------------------------------------------------------

    def _remember_server(self) -> None:
        nc = self._nc
        url = nc.connected_url if nc is not None else None
        if url is not None:
            self._server_netloc = _hostport(url.netloc)

    def _set_status(self, status: ConnectionStatus) -> None:
        if status is ConnectionStatus.CONNECTED or status is ConnectionStatus.CLOSED:
            self._connected.set()
        if status is self._status:
            return
        self._status = status
        for listener in list(self._listeners):
            self._notify(listener, status)

    @staticmethod
    def _notify(listener: StatusListener, status: ConnectionStatus) -> None:
        try:
            listener(status)
        except Exception:  # a broken listener must not break the connection
            log.exception("connection status listener failed")

    def _explain(self, error: BaseException) -> str:
        """The message of a failed connect; never holds a secret."""
        where = redact_urls(self.config.urls)
        detail = self._redact(_describe(error))
        if _is_auth_error(error):
            return f"NATS at {where} rejected the credentials: {detail}"
        if isinstance(error, ssl.SSLError):
            return f"TLS handshake with NATS at {where} failed: {detail}"
        if isinstance(error, TlsNotOfferedError):
            return (
                f"NATS at {error.url} does not offer TLS, which is required (a tls:// URL "
                "or a TLS option); refused before sending credentials or payments in "
                "clear text"
            )
        if isinstance(error, NotNatsServerError):
            return f"cannot connect to NATS: {self._redact(str(error))}"
        if isinstance(error, OSError):
            return f"NATS unreachable at {where}: {detail}"
        return f"cannot connect to NATS at {where}: {detail}"


async def _discard(nc: Client) -> None:
    """Closes a connection that never became usable, swallowing its errors.

    Bounded: after a failed TLS upgrade the socket's close never completes.
    """
    try:
        async with asyncio.timeout(_DISCARD_TIMEOUT):
            await nc.close()
    except (nats.errors.Error, OSError, TimeoutError, AssertionError, _FatalConnectError) as exc:
        # nats-py asserts when the connection never got far enough to be closed, and
        # reports a reset socket to the error callback, which stops a connect that way
        log.debug("closing a failed NATS connection: %s", type(exc).__name__)


__all__ = ["ConnectionStatus", "NatsClient", "StatusListener", "reconnect_backoff"]
