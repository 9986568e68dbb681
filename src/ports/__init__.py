"""The ports: the contracts every adapter honours and every service codes against."""

from .config import PublisherConfig, SubscriberConfig
from .dead_letters import DeadLetters
from .outcome import Decision, Outcome, decide, failure_reason, max_deliveries_reason
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
    settle_failure,
)

__all__ = [
    "CoreDelivery",
    "DeadLetters",
    "Decision",
    "Delivery",
    "FunctionHandler",
    "MessageHandler",
    "Outcome",
    "PublishReceipt",
    "Publisher",
    "PublisherConfig",
    "Subscriber",
    "SubscriberConfig",
    "Subscription",
    "current_delivery",
    "decide",
    "failure_reason",
    "max_deliveries_reason",
    "run_handler",
    "settle_failure",
]
