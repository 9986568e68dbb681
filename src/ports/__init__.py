"""The ports: the contracts every adapter honours and every service codes against."""

from .config import PublisherConfig, SubscriberConfig
from .dead_letters import DeadLetters
from .publisher import Publisher, PublishReceipt
from .subscriber import (
    CoreDelivery,
    Delivery,
    FunctionHandler,
    MessageHandler,
    Subscriber,
    Subscription,
    current_delivery,
    run_handler,
)

__all__ = [
    "CoreDelivery",
    "DeadLetters",
    "Delivery",
    "FunctionHandler",
    "MessageHandler",
    "PublishReceipt",
    "Publisher",
    "PublisherConfig",
    "Subscriber",
    "SubscriberConfig",
    "Subscription",
    "current_delivery",
    "run_handler",
]
