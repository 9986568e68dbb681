"""Telemetry decorators: Prometheus metrics and OpenTelemetry tracing around any port.

Wrap any :class:`~message_bus.ports.Publisher` or :class:`~message_bus.ports.Subscriber`;
decorators stack (e.g. ``TracingPublisher(MetricsPublisher(publisher, registry), provider)``).
"""

from .metrics import BusMetrics, MetricsPublisher, MetricsSubscriber
from .tracing import TracingPublisher, TracingSubscriber

__all__ = [
    "BusMetrics",
    "MetricsPublisher",
    "MetricsSubscriber",
    "TracingPublisher",
    "TracingSubscriber",
]
