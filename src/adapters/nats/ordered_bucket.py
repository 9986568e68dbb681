"""The JetStream stream behind the ordered groups' KV bucket: its configuration and creation."""

from __future__ import annotations

import asyncio
import logging

import nats.errors
import nats.js.errors
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

from message_bus.adapters.ordered.store import BUCKET, StoreUnavailable
from message_bus.domain.errors import MessageBusError

from .client import NatsClient
from .placement import PLACEMENT_RETRY, place

BUCKET_STREAM = f"KV_{BUCKET}"
"""The stream that holds the ``DELTRAN_ORDERED`` bucket (JetStream KV's naming)."""
BUCKET_SUBJECT_PREFIX = f"$KV.{BUCKET}."
"""A key ``k`` of the bucket is stored under the subject ``$KV.DELTRAN_ORDERED.k``."""
_DUPLICATE_WINDOW = 120.0
log = logging.getLogger("message_bus.nats.ordered")
_EXISTS_OTHERWISE = 10058  # "stream name already in use with a different configuration"


def bucket_config(replicas: int) -> StreamConfig:
    """The bucket as JetStream KV lays it out: history 1, file storage, direct gets."""
    return StreamConfig(
        name=BUCKET_STREAM,
        description="DelTran ordered consumer groups: positions, leases, members",
        subjects=[f"{BUCKET_SUBJECT_PREFIX}>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        discard=DiscardPolicy.NEW,
        max_msgs_per_subject=1,
        max_msgs=-1,
        max_consumers=-1,
        max_age=0.0,
        duplicate_window=_DUPLICATE_WINDOW,
        allow_rollup_hdrs=True,
        allow_direct=True,
        deny_delete=True,
        num_replicas=replicas,
    )


async def ensure_bucket(client: NatsClient, replicas: int, timeout: float) -> None:
    """Creates the bucket if it is missing; idempotent, also when members race.

    An existing bucket keeps its settings (``deltran-bus streams apply`` corrects
    them), except that direct gets are turned on if they are off: the group store reads
    through them. A replicated bucket refused for a peer that has not reported yet
    (a node just started or rejoined) is asked again within ``timeout``.

    Raises:
        StoreUnavailable: JetStream did not answer within ``timeout``, or refused.
    """
    refused: list[nats.js.errors.APIError] = []
    try:
        async with asyncio.timeout(timeout):
            await _ensure(client, replicas, timeout, refused)
    except nats.js.errors.APIError as exc:
        raise StoreUnavailable(
            f"bucket {BUCKET}: JetStream refused ({exc.description}, code {exc.err_code})"
        ) from exc
    except TimeoutError as exc:
        if not refused:
            raise StoreUnavailable(f"bucket {BUCKET}: JetStream did not answer ({exc!r})") from exc
        last = refused[-1]
        raise StoreUnavailable(
            f"bucket {BUCKET}: JetStream refused ({last.description}, code {last.err_code}); "
            f"still so after {timeout:g} s"
        ) from last
    except (nats.errors.Error, OSError, MessageBusError) as exc:
        raise StoreUnavailable(f"bucket {BUCKET}: JetStream did not answer ({exc!r})") from exc


async def _ensure(
    client: NatsClient, replicas: int, timeout: float, refused: list[nats.js.errors.APIError]
) -> None:
    js = client.jetstream
    loop = asyncio.get_running_loop()
    last = loop.time() + timeout - PLACEMENT_RETRY  # the last attempt fits the timeout
    try:
        info = await js.stream_info(BUCKET_STREAM)
    except nats.js.errors.NotFoundError:
        config = bucket_config(replicas)
        try:
            await place(
                lambda: js.add_stream(config), last - loop.time(), log, f"bucket {BUCKET}", refused
            )
            return
        except nats.js.errors.APIError as exc:
            if exc.err_code != _EXISTS_OTHERWISE:
                raise
        info = await js.stream_info(BUCKET_STREAM)  # created by another member meanwhile
    if not info.config.allow_direct:
        await js.update_stream(info.config.evolve(allow_direct=True))


__all__ = ["BUCKET_STREAM", "BUCKET_SUBJECT_PREFIX", "bucket_config", "ensure_bucket"]
