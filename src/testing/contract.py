"""Turns the contract suite into pytest tests for any adapter: one test per scenario."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from .harness import Features, HarnessFactory
from .scenarios import SCENARIOS, ScenarioSpec, applicable

__all__ = ["contract_tests"]


def contract_tests(
    factory: HarnessFactory, *, features: Features | None = None
) -> Callable[[ScenarioSpec], None]:
    """A pytest test function, parametrized over the contract scenarios, that runs each
    against the harnesses ``factory`` builds.

    Assign it to a ``test_`` name in a test module::

        from message_bus.testing import contract_tests

        test_my_adapter_honours_the_contract = contract_tests(MyHarness.create)

    Each scenario runs in an event loop of its own (``asyncio.run``), so the test needs
    no async plugin; ``factory`` is called inside that loop, once per scenario, and the
    harness it builds is closed after the scenario whatever happens.

    Args:
        factory: builds a fresh :class:`~message_bus.testing.BusHarness` per scenario.
        features: what the adapter can do. Given, only the applicable scenarios become
            tests; otherwise every scenario does, and those needing a feature the
            harness lacks are skipped, naming the flags.

    Returns:
        The test function; its test ids are the scenario names.
    """
    import pytest

    specs = list(SCENARIOS.values()) if features is None else applicable(features)

    @pytest.mark.parametrize("contract_scenario", specs, ids=str)
    def test_contract_scenario(contract_scenario: ScenarioSpec) -> None:
        missing = asyncio.run(_run(contract_scenario, factory))
        if missing:
            pytest.skip(f"{contract_scenario.name} needs features {', '.join(missing)}")

    return test_contract_scenario


async def _run(spec: ScenarioSpec, factory: HarnessFactory) -> list[str]:
    """Run ``spec`` on a fresh harness; the feature flags it lacked, if it did not run."""
    harness = await factory()
    try:
        missing = spec.missing(harness.features)
        if not missing:
            await spec.run(harness)
        return missing
    finally:
        await harness.close()
