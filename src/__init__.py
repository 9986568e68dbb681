"""deltran-message-bus: DelTran's payment-settlement messages over NATS JetStream.

The public API: the domain (messages, types, partition keys, errors) and the ports
(publisher, subscriber, handler, configs). Adapters live in ``message_bus.adapters``
and are wired by ``message_bus.app``; importing this package imports no NATS client.
"""

from message_bus.domain.catalog import MessageType, StreamCatalog, StreamSpec
from message_bus.domain.codec import WireCodec
from message_bus.domain.dead_letter import DeadLetter
from message_bus.domain.errors import (
    AlreadyReplayedError,
    BusConnectionError,
    CircuitOpenError,
    ClosedError,
    DecodeError,
    HandlerError,
    MessageBusError,
    NoRespondersError,
    NotFoundError,
    PartitionCountError,
    PermanentError,
    PublishBatchError,
    PublishError,
    PublishFailure,
    PublishTimeout,
    RequestTimeout,
    RetryableError,
    StartPositionConflict,
    StreamError,
    ValidationError,
)
from message_bus.domain.message import Message
from message_bus.domain.partition import Bank, Broadcast, Corridor, CorridorBank, PartitionKey
from message_bus.ports import (
    DeadLetters,
    Delivery,
    FunctionHandler,
    MessageHandler,
    Publisher,
    PublisherConfig,
    PublishReceipt,
    Subscriber,
    SubscriberConfig,
    Subscription,
    current_delivery,
)

__version__ = "0.1.0"

__all__ = [
    "AlreadyReplayedError",
    "Bank",
    "Broadcast",
    "BusConnectionError",
    "CircuitOpenError",
    "ClosedError",
    "Corridor",
    "CorridorBank",
    "DeadLetter",
    "DeadLetters",
    "DecodeError",
    "Delivery",
    "FunctionHandler",
    "HandlerError",
    "Message",
    "MessageBusError",
    "MessageHandler",
    "MessageType",
    "NoRespondersError",
    "NotFoundError",
    "PartitionCountError",
    "PartitionKey",
    "PermanentError",
    "PublishBatchError",
    "PublishError",
    "PublishFailure",
    "PublishReceipt",
    "PublishTimeout",
    "Publisher",
    "PublisherConfig",
    "RequestTimeout",
    "RetryableError",
    "StartPositionConflict",
    "StreamCatalog",
    "StreamError",
    "StreamSpec",
    "Subscriber",
    "SubscriberConfig",
    "Subscription",
    "ValidationError",
    "WireCodec",
    "current_delivery",
]
