"""Turns the contract suite into pytest tests for any adapter: one test per scenario."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable

from .harness import BusHarness, Features, HarnessFactory
from .scenarios import SCENARIOS, ScenarioSpec, applicable

__all__ = ["contract_tests"]


def contract_tests(
    factory: HarnessFactory | Callable[[], BusHarness], *, features: Features | None = None
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
        factory: builds a fresh :class:`~message_bus.testing.BusHarness` per scenario:
            an ``async`` function (a :data:`HarnessFactory`), or a plain callable such
            as the harness class itself.
        features: what the adapter can do. Given, only the applicable scenarios become
            tests; otherwise every scenario does, and those needing a feature the
            harness lacks are skipped, naming the flags.

    Returns:
        The test function; its test ids are the scenario names.
    """
    import pytest

    if not callable(factory):
        raise TypeError(f"factory must build a harness (a callable), got {factory!r}")
    specs = list(SCENARIOS.values()) if features is None else applicable(features)

    @pytest.mark.parametrize("contract_scenario", specs, ids=str)
    def test_contract_scenario(contract_scenario: ScenarioSpec) -> None:
        missing = asyncio.run(_run(contract_scenario, factory))
        if missing:
            pytest.skip(f"{contract_scenario.name} needs features {', '.join(missing)}")

    return test_contract_scenario


async def _run(spec: ScenarioSpec, factory: HarnessFactory | Callable[[], BusHarness]) -> list[str]:
    """Run ``spec`` on a fresh harness; the feature flags it lacked, if it did not run."""
    built = factory()
    harness = await built if inspect.isawaitable(built) else built
    if not isinstance(harness, BusHarness):
        raise TypeError(f"the factory built {harness!r}, which is not a BusHarness")
    try:
        missing = spec.missing(harness.features)
        if not missing:
            await spec.run(harness)
        return missing
    finally:
        await harness.close()
