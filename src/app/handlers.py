"""A function registered on a bus, adapted to the Subscriber port's MessageHandler.

The adapter converts the payload to the handler's Struct (a payload that does not fit
is a :class:`PermanentError`: dead-lettered, never retried), passes the ``Message``
to a parameter annotated with it, and publishes what the handler returned before the
handler's run ends, so before the ack. A returned message's id is derived from the
delivered message's id and its place in what was returned, so a redelivery that
publishes it again is deduplicated by the stream.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import PermanentError, ValidationError
from message_bus.domain.ids import derived_message_id
from message_bus.domain.message import Message
from message_bus.ports import Delivery, Publisher, current_delivery

from .middleware import Context, Middleware, run_chain

__all__ = ["HandlerSpec", "RegisteredHandler", "follow_ups"]

HandlerFunction = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class _Binding:
    """Which parameter of the function gets the payload, the message, the delivery."""

    payload: str | None
    message: str | None
    delivery: str | None


@dataclass(frozen=True)
class HandlerSpec:
    """A registered handler: the function and where and how it consumes.

    Attributes:
        function: the ``async def`` (decorated with ``@inject`` if it takes dependencies).
        message_type: the type it consumes.
        group: its consumer group.
        payload: the Struct (or any type msgspec converts to) its payload is given as;
            None: the payload as decoded.
        overrides: SubscriberConfig fields it sets (merged over the configured ones).
        name: ``module.qualname`` of the function.
    """

    function: HandlerFunction
    message_type: MessageType
    group: str
    payload: type[Any] | None
    overrides: Mapping[str, Any]
    name: str
    binding: _Binding

    @classmethod
    def of(
        cls,
        function: HandlerFunction,
        message_type: MessageType,
        group: str,
        payload: type[Any] | None,
        overrides: Mapping[str, Any],
    ) -> HandlerSpec:
        """Check ``function`` and work out its parameters.

        Raises:
            ValidationError: ``message_type`` is not a MessageType.
            TypeError: ``function`` is not an ``async def``, or it has required
                parameters the bus cannot fill.
        """
        if not isinstance(message_type, MessageType):
            raise ValidationError("message_type", message_type, "must be a MessageType")
        if not inspect.iscoroutinefunction(function):
            raise TypeError(
                f"handler {_name(function)} must be an async def (a coroutine function)"
            )
        return cls(
            function=function,
            message_type=message_type,
            group=group,
            payload=payload,
            overrides=dict(overrides),
            name=_name(function),
            binding=_bind(function, payload),
        )


def _name(function: object) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', type(function).__qualname__)}"


def _annotations(function: HandlerFunction) -> dict[str, Any]:
    original = inspect.unwrap(function)
    try:
        return typing.get_type_hints(original)
    except Exception:  # noqa: BLE001  # unresolvable forward references: use the strings
        return dict(getattr(original, "__annotations__", {}))


def _is(annotation: Any, cls: type[Any]) -> bool:
    if annotation is cls:
        return True
    return isinstance(annotation, str) and annotation.rpartition(".")[2] == cls.__name__


def _bind(function: HandlerFunction, payload: type[Any] | None) -> _Binding:
    """Parameters with a default are left alone (``Provide[...]`` fills them); of the
    others, one annotated ``Message`` gets the message, one annotated ``Delivery`` the
    delivery, and the remaining one the payload."""
    hints = _annotations(function)
    found: dict[str, str | None] = {"payload": None, "message": None, "delivery": None}
    others: list[str] = []
    for parameter in inspect.signature(function).parameters.values():
        if parameter.default is not inspect.Parameter.empty or parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
        ):
            continue
        annotation = hints.get(parameter.name, parameter.annotation)
        if _is(annotation, Message) and payload is not Message:
            found["message"] = parameter.name
        elif _is(annotation, Delivery):
            found["delivery"] = parameter.name
        else:
            others.append(parameter.name)
    if len(others) > 1:
        raise TypeError(
            f"handler {_name(function)} has required parameters {', '.join(others)}: one "
            "takes the payload, one annotated Message takes the message; give the others "
            "a default (Provide[...] for dependencies)"
        )
    found["payload"] = others[0] if others else None
    return _Binding(**found)


def follow_ups(delivered: Message, returned: object) -> list[Message]:
    """The messages to publish for what a handler returned on ``delivered``.

    Each gets an id derived from ``delivered.id`` and its index, the correlation id of
    ``delivered`` (its own id when it has none) and ``delivered.id`` as causation id,
    unless it set them itself.

    Raises:
        PermanentError: ``returned`` is not None, a Message or a sequence of Messages.
    """
    if returned is None:
        return []
    items: Sequence[object]
    if isinstance(returned, Message):
        items = [returned]
    elif isinstance(returned, list | tuple):
        items = returned
    else:
        raise PermanentError(
            f"handler returned {type(returned).__name__}: return a Message, a list of "
            "Messages or None"
        )
    messages: list[Message] = []
    for index, item in enumerate(items):
        if not isinstance(item, Message):
            raise PermanentError(
                f"handler returned {type(item).__name__} at index {index}: return Messages"
            )
        messages.append(
            msgspec.structs.replace(
                item,
                id=derived_message_id(delivered.id, index),
                correlation_id=item.correlation_id or delivered.correlation_id or delivered.id,
                causation_id=item.causation_id or delivered.id,
            )
        )
    return messages


class RegisteredHandler:
    """The :class:`~message_bus.ports.MessageHandler` a subscriber runs for a spec."""

    def __init__(
        self, spec: HandlerSpec, publisher: Publisher, middleware: Sequence[Middleware]
    ) -> None:
        self.spec = spec
        self._publisher = publisher
        self._middleware = tuple(middleware)

    async def handle(self, message: Message) -> None:
        try:
            delivery: Delivery | None = current_delivery()
        except LookupError:
            delivery = None
        ctx = Context(
            kind="consume",
            message=message,
            handler=self.spec.name,
            group=self.spec.group,
            delivery=delivery,
        )
        await run_chain(self._middleware, ctx, self._consume)

    async def _consume(self, ctx: Context) -> None:
        returned = await self.spec.function(**self._arguments(ctx))
        for message in follow_ups(ctx.message, returned):
            publish = Context(
                kind="publish",
                message=message,
                handler=ctx.handler,
                group=ctx.group,
                delivery=ctx.delivery,
                cause=ctx.message,
            )
            await run_chain(self._middleware, publish, self._publish)

    async def _publish(self, ctx: Context) -> None:
        try:
            await self._publisher.publish(ctx.message)
        except ValidationError as exc:  # refused before any I/O: the same again on a retry
            raise PermanentError(
                f"follow-up {ctx.message.message_type.value} refused: {exc}"
            ) from exc

    def _arguments(self, ctx: Context) -> dict[str, Any]:
        binding = self.spec.binding
        arguments: dict[str, Any] = {}
        if binding.message is not None:
            arguments[binding.message] = ctx.message
        if binding.delivery is not None:
            arguments[binding.delivery] = ctx.delivery
        if binding.payload is not None:
            arguments[binding.payload] = self._payload(ctx.message)
        return arguments

    def _payload(self, message: Message) -> Any:
        wanted = self.spec.payload
        if wanted is None:
            return message.payload
        if wanted is Message:
            return message
        try:
            return message.payload_as(wanted)
        except ValidationError as exc:
            raise PermanentError(f"payload does not fit {wanted.__name__}: {exc.reason}") from exc
