"""The Publisher port: how a service hands messages to the bus.

Contract, for every adapter:

* ``publish`` returns only once the broker has accepted the message: for a
  stream-backed type, once the stream stored it (or recognised its id as a duplicate
  within the duplicate window); for a core-only type, once it was written to the
  connection. It never returns for a message that was not accepted.
* Input is validated before any I/O: a bad message raises :class:`ValidationError`
  and nothing is sent. That includes the payload, checked against its type's Struct
  (:func:`~message_bus.domain.payload_schema.check_payload`) unless the publisher's
  ``PublisherConfig.validate_payloads`` is False.
* Retries reuse the message id, so a retry of a message the broker already stored
  comes back as a duplicate receipt, never as a second copy.
* Cancelling a ``publish`` leaves the message either stored once or not at all;
  republishing the same message afterwards is always safe.
* ``close`` is idempotent; any call after it raises :class:`ClosedError`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import TracebackType

import msgspec

from message_bus.domain.catalog import MessageType, StreamCatalog
from message_bus.domain.errors import PublishBatchError, PublishError, ValidationError
from message_bus.domain.message import Message


class PublishReceipt(msgspec.Struct, frozen=True):
    """What the broker said when it accepted a message.

    Attributes:
        message_id: the published message's id.
        subject: the subject it was published to.
        stream: the stream that stored it; None for core-only types.
        sequence: its sequence in that stream; None for core-only types.
        duplicate: True if the stream already held this id (nothing new was stored).
        partition: the partition number written to its headers (None for broadcast).
    """

    message_id: str
    subject: str
    stream: str | None = None
    sequence: int | None = None
    duplicate: bool = False
    partition: int | None = None


def check_request(message_type: MessageType, timeout: float, catalog: StreamCatalog) -> None:
    """Raise :class:`ValidationError` unless a request of ``message_type`` with
    ``timeout`` can be sent; every adapter and the CLI call it before any I/O.

    Request-reply is core NATS: a stream-backed type would be stored by its stream
    (which answers with a publish acknowledgement, not a reply), whatever the
    publisher's ``use_jetstream``. The timeout must be a finite number of seconds > 0
    (a NaN deadline never expires).
    """
    ok = isinstance(timeout, int | float) and not isinstance(timeout, bool)
    if not ok or not math.isfinite(timeout) or timeout <= 0:
        raise ValidationError("timeout", timeout, "must be a finite number of seconds > 0")
    if catalog.stream_for(message_type) is not None:
        core_only = ", ".join(t.value for t in MessageType if catalog.stream_for(t) is None)
        raise ValidationError(
            "message_type",
            message_type.value,
            f"is stream-backed; request-reply needs a core-only type ({core_only})",
        )


class Publisher(ABC):
    """Publishes messages; answers requests for core-only request-reply types."""

    @abstractmethod
    async def publish(self, message: Message) -> PublishReceipt:
        """Publish one message and wait until the broker accepted it.

        Raises:
            ValidationError: the message cannot be encoded (nothing was sent).
            PublishTimeout: no acknowledgement within the publish timeout.
            PublishError: the broker rejected it (``reason`` says why, ``retryable``
                whether trying again may help).
            DuplicateWindowError: the stream forgets message ids sooner than a retry
                of this publish may arrive (its duplicate window is shorter than twice
                ``publish_timeout``); the publisher refuses the stream, nothing is sent.
            ClosedError: the publisher was closed.
        """

    async def publish_many(self, messages: Sequence[Message]) -> list[PublishReceipt]:
        """Publish a batch; receipts come back in input order.

        Adapters may pipeline the batch (several acknowledgements awaited at once).
        Every message is validated before the first one is sent. If some messages fail,
        the others still get published and :class:`PublishBatchError` lists, per input
        position, the receipt or the error.
        """
        results: list[PublishReceipt | PublishError] = []
        failed = False
        for message in messages:
            try:
                results.append(await self.publish(message))
            except PublishError as exc:
                results.append(exc)
                failed = True
        if failed:
            raise PublishBatchError(results)
        return results  # type: ignore[return-value]  # no errors in it

    @abstractmethod
    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        """Send a request and wait for one reply message.

        Raises:
            ValidationError: the message is of a stream-backed type or the timeout is
                not a finite number > 0 (see :func:`check_request`), or the message
                cannot be encoded; nothing was sent.
            NoRespondersError: nobody is subscribed to answer (raised at once).
            RequestTimeout: no reply within ``timeout`` seconds.
            ClosedError: the publisher was closed.
        """

    @abstractmethod
    async def close(self) -> None:
        """Release resources; idempotent. Publishes already accepted stay accepted."""

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
