"""The doctor's checks: a running deployment against the production checklist.

:func:`evaluate` is pure (a :class:`Deployment` and the settings in, one :class:`Check`
per item out); :func:`diagnose` reads the deployment and evaluates it. A check passes,
warns (the deployment works but misses an item of the checklist) or fails (something
the bus relies on is wrong: ``deltran-bus doctor`` exits 1).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from nats.js.api import StreamConfig

from message_bus.adapters.nats.client import NatsClient
from message_bus.adapters.nats.deployment import Deployment, read_deployment
from message_bus.adapters.nats.ordered_bucket import bucket_config
from message_bus.adapters.nats.streams import StreamManager, config_drift
from message_bus.domain.catalog import StreamCatalog
from message_bus.domain.errors import DuplicateWindowError
from message_bus.ports.config import PublisherConfig

__all__ = [
    "FEATURE_VERSION",
    "Check",
    "CheckStatus",
    "DesiredStreams",
    "desired_streams",
    "diagnose",
    "evaluate",
    "parse_version",
]

CheckStatus = Literal["pass", "warn", "fail"]

FEATURE_VERSION = (2, 11)
"""The nats-server version that brings per-message TTL and priority groups."""
_HA_SERVERS = 3
_STORAGE_HIGH = 0.9
"""Share of the JetStream store in use above which the storage check warns."""


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the doctor's report.

    Attributes:
        name: the item checked.
        status: ``pass``, ``warn`` or ``fail``.
        found: what was found.
        fix: what to change ("" when it passes).
    """

    name: str
    status: CheckStatus
    found: str
    fix: str = ""


@dataclass(frozen=True, slots=True)
class DesiredStreams:
    """What the settings ask of the streams.

    Attributes:
        configs: each catalog stream's JetStream config, by name.
        dead_letters: the dead-letter stream's name.
        bucket: the ordered groups' KV bucket stream config (checked if it exists).
        publisher: the publishers' config (their retry budget).
    """

    configs: dict[str, StreamConfig]
    dead_letters: str
    bucket: StreamConfig
    publisher: PublisherConfig


def desired_streams(
    catalog: StreamCatalog, replicas: int, duplicate_window: float, publisher: PublisherConfig
) -> DesiredStreams:
    """The stream configs ``streams apply`` would create with these settings."""
    manager = StreamManager(NatsClient())  # desired() only builds configs: no I/O
    configs = {
        spec.name: manager.desired(
            spec, replicas, duplicate_window, replays=spec is not catalog.dead_letters
        )
        for spec in catalog.all_streams()
    }
    return DesiredStreams(configs, catalog.dead_letters.name, bucket_config(replicas), publisher)


async def diagnose(
    client: NatsClient, desired: DesiredStreams, *, monitor_urls: Sequence[str] = ()
) -> list[Check]:
    """Reads the deployment ``client`` is connected to and checks it.

    Raises:
        ValidationError: a monitoring URL is not an http(s) URL (before any I/O).
        BusConnectionError: JetStream did not answer.
        StreamError: JetStream refused a request.
    """
    return evaluate(await read_deployment(client, monitor_urls=monitor_urls), desired)


def parse_version(text: str) -> tuple[int, ...]:
    """``"2.15.1"`` -> ``(2, 15, 1)``; a suffix (``-beta.2``) is ignored; ``()`` if none."""
    match = re.match(r"v?(\d+(?:\.\d+)*)", text.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def evaluate(deployment: Deployment, desired: DesiredStreams) -> list[Check]:
    """One check per item of the checklist, in the report's order."""
    return [
        _version(deployment),
        _cluster(deployment, desired),
        _sync(deployment),
        _tls(deployment),
        _auth(deployment),
        _drift(deployment, desired),
        _window(deployment, desired),
        _dead_letters(deployment, desired),
        _ack_pending(deployment),
        _storage(deployment),
    ]


def _version(d: Deployment) -> Check:
    name = "server version"
    version = parse_version(d.version)
    wanted = ".".join(map(str, FEATURE_VERSION))
    if version >= FEATURE_VERSION:
        return Check(
            name,
            "pass",
            f"nats-server {d.version} (>= {wanted}: per-message TTL and priority groups are "
            "available; the bus uses neither today)",
        )
    return Check(
        name,
        "warn",
        f"nats-server {d.version}: older than {wanted}, which per-message TTL and priority "
        "groups need (the bus uses neither today: ordered groups' KV heartbeats need no "
        "per-message TTL)",
        f"upgrade nats-server to {wanted} or later",
    )


def _cluster(d: Deployment, desired: DesiredStreams) -> Check:
    name = "cluster size"
    replicas = {s.name: int(s.config.num_replicas or 1) for s in d.streams}
    over = sorted(n for n, r in replicas.items() if r > d.cluster_size)
    found = f"{d.cluster_size} server(s) (from {d.cluster_source})"
    if over:
        return Check(
            name,
            "fail",
            f"{found}; more replicas than servers: "
            + ", ".join(f"{n} R{replicas[n]}" for n in over),
            "run as many servers as the replicas, or lower DELTRAN_STREAM_REPLICAS and run "
            "`deltran-bus streams apply`",
        )
    if d.cluster_size < _HA_SERVERS:
        return Check(
            name,
            "warn",
            f"{found}: no failover, a server lost stops the bus",
            "run 3+ servers (infra/docker-compose.nats.yml) with DELTRAN_STREAM_REPLICAS=3",
        )
    single = sorted(n for n in desired.configs if n in replicas and replicas[n] < _HA_SERVERS)
    if single:
        return Check(
            name,
            "warn",
            f"{found}; streams with fewer than {_HA_SERVERS} replicas: {', '.join(single)}",
            "set DELTRAN_STREAM_REPLICAS=3 and run `deltran-bus streams apply`",
        )
    return Check(name, "pass", f"{found}; every catalog stream has {_HA_SERVERS}+ replicas")


def _sync(d: Deployment) -> Check:
    name = "sync interval"
    if d.sync_always is None:
        return Check(
            name,
            "warn",
            f"could not be verified: {d.monitor_problem}",
            "pass --monitor http://HOST:8222 (the server's monitoring port) to read /varz",
        )
    if d.sync_always:
        return Check(name, "pass", "JetStream fsyncs every write (sync_interval: always)")
    return Check(
        name,
        "warn",
        f"sync_interval {d.sync_interval:g}s: an acknowledged publish can be lost on power loss",
        "set jetstream { sync_interval: always } in the server config",
    )


def _tls(d: Deployment) -> Check:
    if d.tls:
        return Check("tls", "pass", f"the connection to {d.server_name} is TLS")
    return Check(
        "tls",
        "warn",
        f"the connection to {d.server_name} is plaintext",
        "serve TLS (tls { cert_file, key_file }) and connect with tls:// URLs "
        "(DELTRAN_NATS_TLS_CA)",
    )


def _auth(d: Deployment) -> Check:
    if d.auth_required:
        return Check("authentication", "pass", f"{d.server_name} requires authentication")
    return Check(
        "authentication",
        "warn",
        f"{d.server_name} accepts clients without credentials",
        "configure NKEY or JWT (operator) authentication on the servers and give the bus "
        "its credentials (DELTRAN_NATS_CREDS_FILE or DELTRAN_NATS_NKEY_SEED)",
    )


def _drift(d: Deployment, desired: DesiredStreams) -> Check:
    name = "stream config"
    have = {s.name: s.config for s in d.streams}
    missing = [n for n in desired.configs if n not in have]
    drifted = []
    wanted = dict(desired.configs)
    bucket = str(desired.bucket.name)
    if bucket in have:
        wanted[bucket] = desired.bucket
    for stream, config in wanted.items():
        if stream in have:
            lines = config_drift(have[stream], config)
            if lines:
                drifted.append(f"{stream} ({'; '.join(lines)})")
    if missing or drifted:
        parts = []
        if missing:
            parts.append("missing: " + ", ".join(missing))
        if drifted:
            parts.append("drifted from the catalog: " + ", ".join(drifted))
        return Check(
            name,
            "fail",
            "; ".join(parts),
            "run `deltran-bus streams apply` (it creates and corrects the streams; a storage "
            "or retention change needs the stream recreated)",
        )
    return Check(name, "pass", f"{len(wanted)} streams match the catalog and settings")


def _window(d: Deployment, desired: DesiredStreams) -> Check:
    name = "duplicate window"
    publisher = desired.publisher
    short = []
    for stream in d.streams:
        if stream.name not in desired.configs or stream.name == desired.dead_letters:
            continue
        try:
            publisher.check_duplicate_window(
                stream.name, float(stream.config.duplicate_window or 0)
            )
        except DuplicateWindowError:
            short.append(f"{stream.name} {float(stream.config.duplicate_window or 0):g}s")
    budget = f"the publishers' retry budget needs {publisher.min_duplicate_window:g}s"
    if short:
        return Check(
            name,
            "fail",
            f"{budget}; shorter: {', '.join(short)} (a retried publish could be stored twice)",
            f"set DELTRAN_DUPLICATE_WINDOW >= {publisher.min_duplicate_window:g} and run "
            "`deltran-bus streams apply`",
        )
    return Check(name, "pass", f"{budget}; every stream's window is long enough")


def _dead_letters(d: Deployment, desired: DesiredStreams) -> Check:
    name = "dead letters"
    stream = next((s for s in d.streams if s.name == desired.dead_letters), None)
    if stream is None:
        return Check(
            name,
            "fail",
            f"{desired.dead_letters} is missing: failed messages would be lost",
            "run `deltran-bus streams apply`",
        )
    if stream.messages:
        return Check(
            name,
            "warn",
            f"{desired.dead_letters} holds {stream.messages} letter(s)",
            "inspect them with `deltran-bus dlq ls`, then replay or purge",
        )
    return Check(name, "pass", f"{desired.dead_letters} present, 0 letters")


def _ack_pending(d: Deployment) -> Check:
    name = "ack pending"
    full = [
        f"{c.stream}/{c.name} {c.ack_pending}/{c.max_ack_pending}"
        for c in d.consumers
        if c.max_ack_pending > 0 and c.ack_pending >= c.max_ack_pending
    ]
    if full:
        return Check(
            name,
            "warn",
            "consumers at their max_ack_pending (no new deliveries until acks): " + ", ".join(full),
            "find the slow or stuck handlers (`deltran-bus groups ls`), or raise "
            "subscriber.max_ack_pending (DELTRAN_MAX_ACK_PENDING)",
        )
    return Check(name, "pass", f"{len(d.consumers)} consumer(s), none at max_ack_pending")


def _storage(d: Deployment) -> Check:
    name = "storage"
    limited = [s for s in d.streams if (s.config.max_bytes or -1) > 0]
    unbounded = len(d.streams) - len(limited)
    growth = sum(max(0, int(s.config.max_bytes or 0) - s.bytes) for s in limited)
    note = f"{len(limited)} stream(s) with max_bytes, {unbounded} bounded by max_age only"
    if d.storage_max is None:
        return Check(
            name,
            "warn",
            f"{d.storage_used} bytes used; the store's limit could not be verified "
            f"({d.monitor_problem}); {note}",
            "pass --monitor http://HOST:8222, or set an account storage limit",
        )
    free = d.storage_max - d.storage_used
    found = f"{d.storage_used} of {d.storage_max} bytes used, {free} free; {note}"
    if d.storage_used >= _STORAGE_HIGH * d.storage_max:
        return Check(
            name,
            "warn",
            found,
            "raise max_file_store (jetstream block) or the account limit, or shorten max ages",
        )
    if growth > free:
        return Check(
            name,
            "warn",
            f"{found}; the streams' max_bytes allow {growth} more bytes than are free",
            "lower the streams' max_bytes or raise max_file_store",
        )
    return Check(name, "pass", found)
