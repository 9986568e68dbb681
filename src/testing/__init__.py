"""The contract suite: scenarios every adapter of the bus passes, runnable without pytest.

An adapter provides a :data:`HarnessFactory` that builds a :class:`BusHarness` (publishers,
subscribers, dead letters, a way to let time pass, and :class:`Features` flags); each
entry of :data:`SCENARIOS` is an ``async`` function of a harness that raises
``AssertionError`` when the adapter breaks the contract::

    from message_bus.testing import applicable, run_scenario
    from message_bus.testing.memory import MemoryHarness

    for spec in applicable(MemoryHarness().features):
        await run_scenario(spec, MemoryHarness.create)

``message_bus.testing.memory.MemoryHarness`` is the in-memory adapter's harness.
"""

from . import limits as _limits  # noqa: F401  # registers the stream limits' scenarios
from . import ordering as _ordering  # noqa: F401  # registers the ordered groups' scenarios
from . import start_position as _start_position  # noqa: F401  # registers start positions'
from .bus_fixture import BusFixture
from .contract import contract_tests
from .harness import BusHarness, Features, Gate, HarnessFactory, WrappedHarness, eventually
from .scenarios import (
    RUN_HEADER,
    SCENARIOS,
    Context,
    Inbox,
    Received,
    Scenario,
    ScenarioSpec,
    applicable,
    run_scenario,
    scenario,
)

__all__ = [
    "RUN_HEADER",
    "SCENARIOS",
    "BusFixture",
    "BusHarness",
    "Context",
    "Features",
    "Gate",
    "HarnessFactory",
    "Inbox",
    "Received",
    "Scenario",
    "ScenarioSpec",
    "WrappedHarness",
    "applicable",
    "contract_tests",
    "eventually",
    "run_scenario",
    "scenario",
]
