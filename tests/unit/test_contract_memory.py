"""The in-memory adapter passes the shared contract suite (on a ManualClock), bare and
wrapped in the telemetry decorators."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

from message_bus.adapters.telemetry import (
    MetricsPublisher,
    MetricsSubscriber,
    TracingPublisher,
    TracingSubscriber,
)
from message_bus.testing import SCENARIOS, BusHarness, ScenarioSpec, WrappedHarness, run_scenario
from message_bus.testing.memory import MemoryHarness

CONTRACT = pytest.mark.parametrize("spec", list(SCENARIOS.values()), ids=str)


@CONTRACT
async def test_in_memory_broker_honours_the_contract(spec: ScenarioSpec) -> None:
    await run_scenario(spec, MemoryHarness.create)


class TelemetryHarness(WrappedHarness):
    """The memory harness with every publisher and subscriber wrapped in Metrics and
    Tracing decorators, recording into a fresh registry and tracer provider."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        super().__init__(
            MemoryHarness(),
            wrap_publisher=lambda p: TracingPublisher(
                MetricsPublisher(p, self.registry), self.provider
            ),
            wrap_subscriber=lambda s: TracingSubscriber(
                MetricsSubscriber(s, self.registry), self.provider
            ),
        )

    async def close(self) -> None:
        await super().close()
        self.provider.shutdown()


async def telemetry_harness() -> BusHarness:
    return TelemetryHarness()


@CONTRACT
async def test_telemetry_decorated_in_memory_broker_honours_the_contract(
    spec: ScenarioSpec,
) -> None:
    await run_scenario(spec, telemetry_harness)
