"""Reads what a running NATS deployment is: server, JetStream storage, streams and consumers.

Read-only, for ``deltran-bus doctor``. The server's own INFO gives its version, whether
it requires authentication and (without a monitoring endpoint) the cluster's client
URLs; ``$JS.API.INFO`` the account's storage; the monitoring endpoint, when one is
given, ``/varz`` (JetStream's ``sync_interval``) and ``/jsz`` (the cluster's size and
the server's store limit). nats-py errors are mapped to the bus's own:
``BusConnectionError`` when JetStream does not answer, ``StreamError`` when it refuses.
"""

from __future__ import annotations

import asyncio
import functools
import json
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from nats.js.api import ConsumerInfo, StreamConfig, StreamInfo

from message_bus.domain.errors import BusConnectionError, ValidationError

from .client import NatsClient
from .internals import Connection
from .jsapi import call_jetstream, list_consumers

T = TypeVar("T")

"""Consumers per page of JetStream's consumer list."""
_HTTP_TIMEOUT = 5.0
# urllib would send loopback monitoring requests through HTTP_PROXY if one is set.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass(frozen=True, slots=True)
class StreamState:
    """One stream on the server.

    Attributes:
        name: the stream.
        config: its configuration as JetStream reports it.
        messages: messages stored.
        bytes: bytes stored.
    """

    name: str
    config: StreamConfig
    messages: int
    bytes: int


@dataclass(frozen=True, slots=True)
class ConsumerLoad:
    """One consumer's unacknowledged deliveries against its limit.

    Attributes:
        stream: the stream it reads.
        name: the consumer.
        ack_pending: delivered, not yet acknowledged.
        max_ack_pending: the most it may have (0 or less: no limit).
    """

    stream: str
    name: str
    ack_pending: int
    max_ack_pending: int


@dataclass(frozen=True, slots=True)
class Deployment:
    """A running deployment as the doctor sees it.

    Attributes:
        version: the nats-server version (``2.15.1``).
        server_name: the name of the server connected to.
        tls: the connection to it is TLS.
        auth_required: it requires clients to authenticate.
        cluster_size: servers in its cluster (1 if not clustered).
        cluster_source: where ``cluster_size`` was read.
        sync_always: JetStream fsyncs every write; None if not verified (no monitoring
            endpoint answered).
        sync_interval: seconds between JetStream fsyncs (None if not verified).
        storage_used: bytes of file storage the account uses.
        storage_max: bytes of file storage the account may use (its own limit, else the
            server's store limit from ``/jsz``); None if unknown.
        streams: every stream, by name.
        consumers: every consumer, by stream then name.
        monitor_problem: why no monitoring endpoint was read ("" if one was).
    """

    version: str
    server_name: str
    tls: bool
    auth_required: bool
    cluster_size: int
    cluster_source: str
    sync_always: bool | None
    sync_interval: float | None
    storage_used: int
    storage_max: int | None
    streams: tuple[StreamState, ...]
    consumers: tuple[ConsumerLoad, ...]
    monitor_problem: str = ""


def check_monitor_url(url: str) -> str:
    """``url`` without a trailing slash if it is an http(s) URL with a host.

    Raises:
        ValidationError: it is not (naming the field ``monitor_url`` and the value).
    """
    try:
        parsed = urllib.parse.urlsplit(url) if isinstance(url, str) else None
        port_ok = parsed is not None and (parsed.port is None or parsed.port > 0)
    except ValueError:  # an unparsable address or port
        parsed, port_ok = None, False
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.hostname:
        port_ok = False
    if not port_ok:
        raise ValidationError(
            "monitor_url", url, "must be an http:// or https:// URL of a monitoring port"
        )
    return url.rstrip("/")


async def read_deployment(
    client: NatsClient, *, monitor_urls: Sequence[str] = (), timeout: float = 15.0
) -> Deployment:
    """What the deployment ``client`` is connected to is, read without changing anything.

    Args:
        client: a connected client.
        monitor_urls: monitoring endpoints (``http://host:8222``) tried in order; the
            first that answers is read.
        timeout: seconds for all of JetStream's answers together.

    Raises:
        ValidationError: a monitoring URL is not an http(s) URL (before any I/O).
        BusConnectionError: JetStream did not answer within ``timeout``.
        StreamError: JetStream refused a request.
    """
    urls = [check_monitor_url(url) for url in monitor_urls]
    monitor, problem = await _monitor(urls)
    try:
        async with asyncio.timeout(timeout):
            return await _read(client, monitor, problem)
    except TimeoutError as exc:
        raise BusConnectionError(f"JetStream did not answer within {timeout:g}s") from exc


async def _read(client: NatsClient, monitor: dict[str, Any], problem: str) -> Deployment:
    nc = client.connection
    info = nc.server_info if isinstance(nc, Connection) else {}
    tls = nc.uses_tls if isinstance(nc, Connection) else False
    js = client.jetstream
    account = await call_jetstream("*", js.account_info)
    streams: list[StreamInfo] = []
    while True:
        page: list[StreamInfo] = await call_jetstream(
            "*", functools.partial(js.streams_info, len(streams))
        )
        if not page:
            break
        streams.extend(page)
    states = sorted(
        (
            StreamState(str(s.config.name), s.config, int(s.state.messages), int(s.state.bytes))
            for s in streams
        ),
        key=lambda s: s.name,
    )
    consumers: list[ConsumerLoad] = []
    for state in states:
        consumers.extend(_load(c) for c in await list_consumers(client, state.name))
    consumers.sort(key=lambda c: (c.stream, c.name))
    varz, jsz = monitor.get("varz", {}), monitor.get("jsz", {})
    size, source = _cluster_size(info, jsz)
    js_config = (varz.get("jetstream") or {}).get("config") or {}
    sync_always: bool | None = None
    sync_interval: float | None = None
    if js_config:
        sync_always = bool(js_config.get("sync_always", False))
        sync_interval = float(js_config.get("sync_interval", 0)) / 1e9
    elif not problem:
        problem = "the monitoring endpoint's /varz shows no jetstream.config"
    storage_max: int | None = int(account.limits.max_storage)
    if storage_max is None or storage_max < 0:
        server_max = (jsz.get("config") or {}).get("max_storage")
        storage_max = int(server_max) if server_max else None
    return Deployment(
        version=str(info.get("version") or nc.connected_server_version),
        server_name=str(info.get("server_name", "")),
        tls=tls,
        auth_required=bool(info.get("auth_required", False)),
        cluster_size=size,
        cluster_source=source,
        sync_always=sync_always,
        sync_interval=sync_interval,
        storage_used=int(account.storage),
        storage_max=storage_max,
        streams=tuple(states),
        consumers=tuple(consumers),
        monitor_problem=problem,
    )


def _cluster_size(info: dict[str, Any], jsz: dict[str, Any]) -> tuple[int, str]:
    meta = jsz.get("meta_cluster") or {}
    if meta.get("cluster_size"):
        return int(meta["cluster_size"]), "/jsz meta_cluster"
    if jsz:
        return 1, "/jsz (no meta cluster)"
    urls = set(info.get("connect_urls") or ())
    if info.get("cluster") or urls:
        return max(1, len(urls)), "server INFO connect_urls"
    return 1, "server INFO (no cluster)"


def _load(info: ConsumerInfo) -> ConsumerLoad:
    return ConsumerLoad(
        stream=info.stream_name,
        name=info.name,
        ack_pending=int(info.num_ack_pending or 0),
        max_ack_pending=int(info.config.max_ack_pending or 0),
    )


async def _monitor(urls: Sequence[str]) -> tuple[dict[str, Any], str]:
    """``{"varz": ..., "jsz": ...}`` from the first endpoint that answers, and why none
    did ("" if one did)."""
    if not urls:
        return {}, "no monitoring endpoint given (--monitor URL)"
    problems = []
    for url in urls:
        try:
            varz = await asyncio.to_thread(_get_json, f"{url}/varz")
            jsz = await asyncio.to_thread(_get_json, f"{url}/jsz")
        except (OSError, ValueError) as exc:
            problems.append(f"{url}: {exc}")
            continue
        return {"varz": varz, "jsz": jsz}, ""
    return {}, "no monitoring endpoint answered (" + "; ".join(problems) + ")"


def _get_json(url: str) -> dict[str, Any]:
    with _HTTP.open(url, timeout=_HTTP_TIMEOUT) as response:
        document = json.loads(response.read())
    if not isinstance(document, dict):
        raise ValueError(f"{url} did not answer a JSON object")
    return document


__all__ = [
    "ConsumerLoad",
    "Deployment",
    "StreamState",
    "check_monitor_url",
    "read_deployment",
]
