"""Contract scenarios of stream limits: a full stream refuses (discard=new) or drops its oldest.

Each scenario registers a message type of its own whose stream has the limits under
test, asks the harness to create that stream (``add_stream``, see
:attr:`~message_bus.testing.Features.stream_limits`), and unregisters the type at the
end. With ``discard=new`` a stream at ``max_msgs`` refuses the next publish with
``PublishError(reason=stream_full)`` at once (not retried until the publish timeout),
keeps every message it had, and still answers a retry of a stored message as a
duplicate; with ``discard=old`` it stores the new message and drops the oldest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from message_bus.domain.catalog import MessageType, StreamLimits
from message_bus.domain.errors import PublishBatchError, PublishError, PublishFailure
from message_bus.domain.message import Message

from .harness import BusHarness
from .scenarios import Context, recording, scenario

AT_ONCE = 2.0
"""Seconds (real time) within which a refused publish must fail: well under the default
5 s publish timeout that a retried refusal would use up."""


@contextlib.asynccontextmanager
async def limited_type(
    h: BusHarness, ctx: Context, limits: StreamLimits
) -> AsyncIterator[MessageType]:
    """A message type of this run whose stream (created on the harness) has ``limits``."""
    tag = ctx.run.lower()
    message_type = MessageType.register(
        f"LimitsProbe{tag.upper()}",
        f"limits-probe-{tag}",
        stream=f"LIMITS_PROBE_{tag.upper()}",
        limits=limits,
    )
    try:
        await h.add_stream(message_type)  # type: ignore[attr-defined]
        yield message_type
    finally:
        MessageType.unregister(message_type)


async def _stored(h: BusHarness, ctx: Context, message_type: MessageType, count: int) -> list[str]:
    """The ids of the run's messages the stream holds, read by a reader in no group."""
    inbox = ctx.inbox()
    reader = h.subscriber(message_type, ctx.config("reader"), ephemeral=True)
    subscription = await reader.subscribe(recording(inbox))
    try:
        await ctx.eventually(lambda: len(inbox) >= count, f"{count} stored messages")
        await h.settle()
    finally:
        await subscription.stop()
    return inbox.ids


def _is_full(error: PublishError, message: Message) -> None:
    assert error.reason is PublishFailure.STREAM_FULL, f"refused with {error.reason}: {error}"
    assert not error.retryable, "a full stream's refusal is retryable"
    assert error.message_id == message.id, f"the error names {error.message_id}"


@scenario(requires=["stream_limits"])
async def full_stream_refuses_the_next_publish_with_stream_full_and_drops_nothing(
    h: BusHarness,
) -> None:
    ctx = Context(h)
    async with limited_type(h, ctx, StreamLimits(max_msgs=3)) as probe:
        publisher = h.publisher()
        kept = [ctx.message({"n": i}, message_type=probe) for i in range(3)]
        for message in kept:
            receipt = await publisher.publish(message)
            assert not receipt.duplicate
        loop = asyncio.get_running_loop()
        for n in (3, 4):  # refused each time, at once, and the publisher stays usable
            extra = ctx.message({"n": n}, message_type=probe)
            began = loop.time()
            try:
                await publisher.publish(extra)
            except PublishError as exc:
                _is_full(exc, extra)
            else:
                raise AssertionError("a full stream (discard=new) accepted a publish")
            took = loop.time() - began
            assert took < AT_ONCE, f"the refusal took {took:.2f}s (retried?)"
        again = await publisher.publish(kept[0])  # a retry of a stored message
        assert again.duplicate, "a retry of a stored message was not answered as a duplicate"
        batch = [ctx.message({"n": n}, message_type=probe) for n in (5, 6)]
        results: list[object] = []
        try:
            await publisher.publish_many(batch)
        except PublishBatchError as exc:
            results = list(exc.results)
        assert len(results) == 2, f"a full stream answered a batch with {results}"
        for message, result in zip(batch, results, strict=True):
            assert isinstance(result, PublishError), f"{message.id} was stored: {result}"
            _is_full(result, message)
        elsewhere = await publisher.publish(ctx.message({"n": 7}))  # another stream
        assert elsewhere.sequence is not None, "a publish to another stream failed"
        stored = await _stored(h, ctx, probe, len(kept))
        assert stored == [m.id for m in kept], f"the stream holds {stored}"


@scenario(requires=["stream_limits"])
async def stream_with_discard_old_drops_the_oldest_to_store_the_next(h: BusHarness) -> None:
    ctx = Context(h)
    async with limited_type(h, ctx, StreamLimits(max_msgs=3, discard="old")) as probe:
        publisher = h.publisher()
        sent = [ctx.message({"n": i}, message_type=probe) for i in range(5)]
        for message in sent:
            await publisher.publish(message)
        stored = await _stored(h, ctx, probe, 3)
        assert stored == [m.id for m in sent[2:]], f"the stream holds {stored}"


__all__ = ["AT_ONCE", "limited_type"]
