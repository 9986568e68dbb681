"""The pure model of the bus: message types, partition keys, the envelope, the wire codec."""

from .catalog import (
    DEAD_LETTER_STREAM,
    DEFAULT_STREAMS,
    MessageType,
    StreamCatalog,
    StreamSpec,
)
from .codec import Encoded, WireCodec
from .errors import (
    BusConnectionError,
    CircuitOpenError,
    ClosedError,
    DecodeError,
    HandlerError,
    MessageBusError,
    NoRespondersError,
    NotFoundError,
    PermanentError,
    PublishError,
    PublishFailure,
    PublishTimeout,
    RequestTimeout,
    RetryableError,
    ValidationError,
)
from .message import Message
from .partition import (
    DEFAULT_PARTITIONS,
    Bank,
    Broadcast,
    Corridor,
    CorridorBank,
    PartitionKey,
)

__all__ = [
    "DEAD_LETTER_STREAM",
    "DEFAULT_PARTITIONS",
    "DEFAULT_STREAMS",
    "Bank",
    "Broadcast",
    "BusConnectionError",
    "CircuitOpenError",
    "ClosedError",
    "Corridor",
    "CorridorBank",
    "DecodeError",
    "Encoded",
    "HandlerError",
    "Message",
    "MessageBusError",
    "MessageType",
    "NoRespondersError",
    "NotFoundError",
    "PartitionKey",
    "PermanentError",
    "PublishError",
    "PublishFailure",
    "PublishTimeout",
    "RequestTimeout",
    "RetryableError",
    "StreamCatalog",
    "StreamSpec",
    "ValidationError",
    "WireCodec",
]
