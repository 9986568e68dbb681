"""Records what publishers published, and asserts on it with readable failure messages."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import msgspec

from message_bus.domain.catalog import MessageType
from message_bus.domain.codec import WireCodec, encode_payload
from message_bus.domain.message import Message
from message_bus.ports.publisher import Publisher, PublishReceipt

Where = Callable[[Message], bool] | Mapping[str, Any]
"""What ``assert_published`` matches: a predicate on the message, or payload fields that
must equal the given values (compared as JSON, so ``Decimal("10.00")`` matches
``"10.00"``)."""

_SHOWN = 5
"""Messages a failure message lists before it elides the rest."""


class PublishedLog:
    """Every message accepted by the recording publishers of one bus, in publish order.

    A message is recorded as a handler would receive it (encoded and decoded again, so
    its payload is plain JSON and its ``partition`` is set); a retry the broker
    deduplicated (``receipt.duplicate``) is not recorded twice.
    """

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def record(self, message: Message, codec: WireCodec) -> None:
        """Append ``message`` as it travels on the wire."""
        self.messages.append(codec.decode(*codec.encode(message)))

    def clear(self) -> None:
        """Forget everything recorded so far."""
        self.messages.clear()

    def published(self, message_type: MessageType | None = None) -> list[Message]:
        """The messages of ``message_type`` (all types if None), in publish order."""
        if message_type is None:
            return list(self.messages)
        return [m for m in self.messages if m.message_type == message_type]

    def assert_published(
        self,
        message_type: MessageType,
        *,
        count: int | None = None,
        where: Where | None = None,
    ) -> list[Message]:
        """Assert that messages of ``message_type`` (matching ``where``) were published.

        Args:
            message_type: the type to look for.
            count: how many must match exactly (default: at least one; ``0``: none).
            where: a predicate on the message, or payload fields and their values.

        Returns:
            The matching messages, in publish order.

        Raises:
            AssertionError: the count is wrong; the message says what was published
                instead.
            ValueError: ``count`` is negative or not an int.
        """
        __tracebackhide__ = True  # pytest shows the test's line, not this one
        if count is not None and (
            not isinstance(count, int) or isinstance(count, bool) or count < 0
        ):
            raise ValueError(f"count must be an int >= 0, got {count!r}")
        of_type = self.published(message_type)
        matching = of_type if where is None else [m for m in of_type if _matches(m, where)]
        if count is None:
            if matching:
                return matching
            wanted = "at least 1"
        elif len(matching) == count:
            return matching
        else:
            wanted = str(count)
        raise AssertionError(self._explain(message_type, wanted, where, matching, of_type))

    def _explain(
        self,
        message_type: MessageType,
        wanted: str,
        where: Where | None,
        matching: Sequence[Message],
        of_type: Sequence[Message],
    ) -> str:
        condition = "" if where is None else f" where {_describe(where)}"
        lines = [
            f"expected {wanted} {message_type.value} message(s){condition}, found {len(matching)}"
        ]
        if where is not None:
            lines.append(f"{len(of_type)} {message_type.value} message(s) were published:")
            lines.extend(_listing(of_type))
        elif matching:
            lines.extend(_listing(matching))
        others = Counter(
            m.message_type.value for m in self.messages if m.message_type != message_type
        )
        if others:
            lines.append(
                "other types published: "
                + ", ".join(f"{name} x{n}" for name, n in sorted(others.items()))
            )
        elif not self.messages:
            lines.append("nothing was published through this bus")
        return "\n".join(lines)


class RecordingPublisher(Publisher):
    """A publisher that records into a :class:`PublishedLog` what ``inner`` accepted.

    Args:
        inner: the publisher that does the work.
        log: where accepted messages go.
        codec: encodes a recorded message as ``inner`` does (same partition count).
    """

    def __init__(self, inner: Publisher, log: PublishedLog, codec: WireCodec) -> None:
        self.inner = inner
        self.log = log
        self.codec = codec

    async def publish(self, message: Message) -> PublishReceipt:
        receipt = await self.inner.publish(message)
        if not receipt.duplicate:
            self.log.record(message, self.codec)
        return receipt

    async def publish_many(self, messages: Sequence[Message]) -> list[PublishReceipt]:
        receipts = await self.inner.publish_many(messages)
        for message, receipt in zip(messages, receipts, strict=True):
            if not receipt.duplicate:
                self.log.record(message, self.codec)
        return receipts

    async def request(self, message: Message, timeout: float = 5.0) -> Message:
        reply = await self.inner.request(message, timeout)
        self.log.record(message, self.codec)
        return reply

    async def close(self) -> None:
        await self.inner.close()


def _matches(message: Message, where: Where) -> bool:
    if callable(where):
        return bool(where(message))
    payload = message.payload
    if not isinstance(payload, Mapping):
        return False
    return all(k in payload and payload[k] == _as_json(v) for k, v in where.items())


def _as_json(value: Any) -> Any:
    """``value`` as it reads after a trip through the wire format."""
    return msgspec.json.decode(encode_payload(value))


def _describe(where: Where) -> str:
    if callable(where):
        return getattr(where, "__name__", repr(where))
    return ", ".join(f"{k}={_as_json(v)!r}" for k, v in where.items())


def _listing(messages: Sequence[Message]) -> list[str]:
    lines = [
        f"  #{i}: {m.partition_key.suffix} payload={m.payload!r}"
        for i, m in enumerate(messages[:_SHOWN], 1)
    ]
    if len(messages) > _SHOWN:
        lines.append(f"  ... and {len(messages) - _SHOWN} more")
    return lines
