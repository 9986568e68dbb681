"""The pytest plugin, run by pytest on small user test files: the ``bus`` fixture, its
assertions' failure messages, and the contract suite against a user's own adapter."""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

from message_bus.testing import SCENARIOS, Features, applicable

pytest_plugins = ["pytester"]

INI = """
[pytest]
asyncio_mode = {mode}
asyncio_default_fixture_loop_scope = function
filterwarnings = error
"""

HEADER = """
import pytest
from decimal import Decimal

from message_bus import Message, MessageType, PartitionKey, RetryableError, SubscriberConfig
from message_bus.testing import BusFixture

KEY = PartitionKey.corridor("USD-EUR")


def instruction(payment_id: str, amount: str = "10.00") -> Message:
    return Message.new(
        MessageType.PAYMENT_INSTRUCTION,
        KEY,
        {
            "payment_id": payment_id,
            "amount": amount,
            "currency": "USD",
            "debtor_bank": "BANKGB2L",
            "creditor_bank": "DEUTDEFF",
        },
    )
"""


def user_tests(pytester: pytest.Pytester, body: str, *, mode: str = "auto") -> None:
    pytester.makeini(INI.format(mode=mode))
    pytester.makepyfile(test_user=HEADER + textwrap.dedent(body))


def test_a_handlers_follow_up_is_recorded_and_asserted_after_settle(
    pytester: pytest.Pytester,
) -> None:
    user_tests(
        pytester,
        """
        async def test_screening_publishes_a_risk_assessment(bus: BusFixture) -> None:
            async def screen(message: Message) -> None:
                risk = {"payment_id": message.payload["payment_id"], "score": 0.2}
                await bus.publish(message.reply(MessageType.RISK_ASSESSMENT, risk))

            await bus.subscribe(MessageType.PAYMENT_INSTRUCTION, screen)
            await bus.publish(instruction("pay_1"))
            await bus.publish(instruction("pay_2", "250.00"))
            await bus.settle()

            [big] = bus.assert_published(
                MessageType.PAYMENT_INSTRUCTION, count=1, where={"amount": Decimal("250.00")}
            )
            risks = bus.assert_published(MessageType.RISK_ASSESSMENT, count=2)
            assert [r.causation_id for r in risks] == [
                m.id for m in bus.published(MessageType.PAYMENT_INSTRUCTION)
            ]
            assert big.payload["payment_id"] == "pay_2"
            assert [m.message_type for m in bus.published()] == [
                MessageType.PAYMENT_INSTRUCTION,
                MessageType.PAYMENT_INSTRUCTION,
                MessageType.RISK_ASSESSMENT,
                MessageType.RISK_ASSESSMENT,
            ]
            bus.assert_published(MessageType.NETTING_PROPOSAL, count=0)


        async def test_each_test_gets_a_fresh_bus(bus: BusFixture) -> None:
            assert bus.published() == []
            assert bus.clock.now() == 0.0
        """,
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_assert_published_of_a_type_never_published_fails_naming_what_was_published(
    pytester: pytest.Pytester,
) -> None:
    user_tests(
        pytester,
        """
        async def test_expects_a_proposal(bus: BusFixture) -> None:
            await bus.publish(instruction("pay_1"))
            bus.assert_published(MessageType.NETTING_PROPOSAL)


        async def test_expects_another_amount(bus: BusFixture) -> None:
            await bus.publish(instruction("pay_1"))
            await bus.publish(instruction("pay_2"))
            bus.assert_published(MessageType.PAYMENT_INSTRUCTION, where={"amount": "99.00"})


        async def test_expects_one_but_two_were_published(bus: BusFixture) -> None:
            await bus.publish(instruction("pay_1"))
            await bus.publish(instruction("pay_2"))
            bus.assert_published(MessageType.PAYMENT_INSTRUCTION, count=1)


        async def test_expects_something_of_an_empty_bus(bus: BusFixture) -> None:
            bus.assert_published(MessageType.CHECKPOINT, count=2)
        """,
    )
    result = pytester.runpytest()
    result.assert_outcomes(failed=4)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: expected at least 1 NettingProposal message(s), found 0",
            "*other types published: PaymentInstruction x1",
            "*AssertionError: expected at least 1 PaymentInstruction message(s) "
            "where amount='99.00', found 0",
            "*2 PaymentInstruction message(s) were published:",
            "*#1: corridor.USD-EUR payload={'payment_id': 'pay_1', 'amount': '10.00'*",
            "*#2: corridor.USD-EUR payload={'payment_id': 'pay_2'*",
            "*AssertionError: expected 1 PaymentInstruction message(s), found 2",
            "*AssertionError: expected 2 Checkpoint message(s), found 0",
            "*nothing was published through this bus",
        ]
    )


def test_advance_moves_the_manual_clock_so_a_retry_delay_passes_at_once(
    pytester: pytest.Pytester,
) -> None:
    user_tests(
        pytester,
        """
        import time


        async def test_a_retry_comes_after_its_delay_and_not_before(bus: BusFixture) -> None:
            attempts: list[float] = []

            async def flaky(message: Message) -> None:
                attempts.append(bus.clock.now())
                if len(attempts) == 1:
                    raise RetryableError("ledger busy", delay=600.0)

            await bus.subscribe(MessageType.PAYMENT_INSTRUCTION, flaky)
            started = time.monotonic()
            await bus.publish(instruction("pay_1"))
            await bus.settle()
            await bus.advance(599.0)
            assert attempts == [0.0]
            await bus.advance(1.0)
            assert attempts == [0.0, 600.0]
            assert time.monotonic() - started < 5.0
            assert await bus.dead_lettered() == []
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_in_strict_mode_an_async_test_using_the_bus_needs_no_mark_and_others_are_left_alone(
    pytester: pytest.Pytester,
) -> None:
    user_tests(
        pytester,
        """
        @pytest.mark.asyncio
        async def test_marked(bus: BusFixture) -> None:
            await bus.publish(instruction("pay_1"))
            bus.assert_published(MessageType.PAYMENT_INSTRUCTION, count=1)


        async def test_unmarked(bus: BusFixture) -> None:
            await bus.publish(instruction("pay_1"))
            bus.assert_published(MessageType.PAYMENT_INSTRUCTION, count=1)


        @pytest.mark.parametrize("payment_id", ["pay_1", "pay_2"])
        async def test_unmarked_parametrized(bus: BusFixture, payment_id: str) -> None:
            await bus.publish(instruction(payment_id))
            bus.assert_published(MessageType.PAYMENT_INSTRUCTION, where={"payment_id": payment_id})


        class TestInAClass:
            async def test_unmarked_method(self, bus: BusFixture) -> None:
                assert bus.published() == []


        async def test_without_the_bus_is_not_marked() -> None:
            pass
        """,
        mode="strict",
    )
    result = pytester.runpytest("-p", "no:warnings")
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.fnmatch_lines(["FAILED *test_without_the_bus_is_not_marked*"])


def test_a_container_on_the_bus_records_what_its_publishers_publish(
    pytester: pytest.Pytester,
) -> None:
    user_tests(
        pytester,
        """
        from message_bus.app.containers import Container


        async def test_the_intake_publishes_through_the_container(bus: BusFixture) -> None:
            container: Container = await bus.container()
            publisher = await container.publisher()
            await publisher.publish(instruction("pay_1"))
            intake = await container.payment_intake()
            assert intake is not None
            [seen] = bus.assert_published(MessageType.PAYMENT_INSTRUCTION, count=1)
            assert seen.payload["payment_id"] == "pay_1"
            assert "traceparent" in seen.headers  # it went through the telemetry decorators
            assert container.memory_broker() is not None
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_a_conftest_gives_the_bus_a_catalog_of_its_own(pytester: pytest.Pytester) -> None:
    pytester.makeconftest(
        """
        import pytest

        from message_bus import MessageType, StreamCatalog


        @pytest.fixture(scope="session")
        def bus_catalog() -> StreamCatalog:
            return StreamCatalog.default().with_max_age(MessageType.PAYMENT_INSTRUCTION, 60.0)
        """
    )
    user_tests(
        pytester,
        """
        async def test_instructions_expire_after_a_minute(bus: BusFixture) -> None:
            await bus.publish(instruction("pay_1"))
            assert bus.broker.stream_info("PAYMENT_INSTRUCTIONS").messages == 1
            await bus.advance(61.0)
            assert bus.broker.stream_info("PAYMENT_INSTRUCTIONS").messages == 0
        """,
    )
    pytester.runpytest().assert_outcomes(passed=1)


def test_the_contract_suite_runs_one_test_per_scenario_against_a_users_adapter(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI.format(mode="strict"))
    pytester.makepyfile(
        test_my_adapter="""
        from message_bus.testing import contract_tests
        from message_bus.testing.memory import MemoryHarness

        test_my_adapter_honours_the_contract = contract_tests(MemoryHarness.create)
        """
    )
    result = pytester.runpytest()
    result.assert_outcomes(passed=len(SCENARIOS))
    result.stdout.no_fnmatch_line("*skipped*")
    collected = pytester.runpytest("--collect-only", "-q").stdout.lines
    wanted = sorted(
        f"test_my_adapter.py::test_my_adapter_honours_the_contract[{name}]" for name in SCENARIOS
    )
    assert sorted(line for line in collected if "::" in line) == wanted


def test_a_harness_without_a_feature_skips_its_scenarios_or_leaves_them_out(
    pytester: pytest.Pytester,
) -> None:
    features = Features(fake_clock=True, min_ack_wait=0.0, supports_request_reply=False)
    needing = [s.name for s in SCENARIOS.values() if s.missing(features)]
    assert needing, "some scenario needs request-reply"
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(
        test_my_adapter="""
        import dataclasses

        from message_bus.testing import Features, contract_tests
        from message_bus.testing.memory import MemoryHarness

        FEATURES = Features(fake_clock=True, min_ack_wait=0.0, supports_request_reply=False)


        async def no_request_reply() -> MemoryHarness:
            harness = MemoryHarness()
            harness.features = FEATURES
            return harness


        test_skips = contract_tests(no_request_reply)
        test_leaves_out = contract_tests(no_request_reply, features=FEATURES)
        """
    )
    result = pytester.runpytest("-rs")
    applicable_count = len(applicable(features))
    result.assert_outcomes(passed=2 * applicable_count, skipped=len(needing))
    result.stdout.fnmatch_lines([f"*{needing[0]} needs features supports_request_reply*"])


def test_an_adapter_that_breaks_the_contract_fails_the_scenarios_it_breaks(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI.format(mode="auto"))
    pytester.makepyfile(
        test_my_adapter="""
        import msgspec

        from message_bus.ports.publisher import Publisher
        from message_bus.testing import WrappedHarness, contract_tests
        from message_bus.testing.memory import MemoryHarness


        class ForgetsHeaders(Publisher):
            def __init__(self, inner: Publisher) -> None:
                self.inner = inner

            async def publish(self, message):
                return await self.inner.publish(msgspec.structs.replace(message, headers={}))

            async def request(self, message, timeout=5.0):
                return await self.inner.request(message, timeout)

            async def close(self) -> None:
                await self.inner.close()


        async def lossy() -> WrappedHarness:
            return WrappedHarness(MemoryHarness(timeout=1.0), wrap_publisher=ForgetsHeaders)


        test_lossy = contract_tests(lossy)
        """
    )
    result = pytester.runpytest("-k", "round_trip_keeps_every_field or header_values_arrive")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(["*FAILED*test_lossy[[]round_trip_keeps_every_field[]]*"])


def test_a_plain_factory_builds_harnesses_and_one_that_builds_no_harness_fails_naming_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeini(INI.format(mode="strict"))
    pytester.makepyfile(
        test_my_adapter="""
        from message_bus.testing import contract_tests
        from message_bus.testing.memory import MemoryHarness

        test_the_class = contract_tests(MemoryHarness)
        test_not_a_harness = contract_tests(dict)
        """
    )
    result = pytester.runpytest("-k", "round_trip_keeps_every_field")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*TypeError: the factory built {}, which is not a BusHarness"])


def test_the_plugins_fixtures_do_not_clash_with_the_projects_own() -> None:
    plugin = Path(__file__).parents[2] / "src" / "testing" / "pytest_plugin.py"
    conftests = sorted((Path(__file__).parents[1]).rglob("conftest.py"))
    assert conftests

    def fixtures(path: Path) -> set[str]:
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and any(
                "fixture" in ast.unparse(d) for d in node.decorator_list
            ):
                names.add(node.name)
        return names

    ours = fixtures(plugin)
    assert ours == {"bus", "bus_catalog", "embedded_nats_server"}
    for conftest in conftests:
        assert not ours & fixtures(conftest), conftest
