"""Every script in examples/ runs (on the in-memory bus) and prints what it promises."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

from message_bus import MessageType

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

EXPECTED = {
    "publisher.py": [
        "to deltran.payment.instruction.corridor.USD-EUR",
        "stream PAYMENT_INSTRUCTIONS, sequence 1",
        "partition 20",
    ],
    "subscriber.py": [
        "Received: pay_0 100.00 USD (partition 20)",
        "Received: pay_2 300.00 EUR",
    ],
    "ordered_consumer.py": [
        "ordered group 'ledger': 2 members, 32 partitions",
        "corridor.USD-EUR.bank.BANKGB2L   partition 23: pay-00 pay-03x pay-03 pay-06 pay-09  "
        "(in order: True)",
        "corridor.USD-EUR.bank.BANKUS33   partition 12: pay-01 pay-04 pay-07 pay-10  "
        "(in order: True)",
        "corridor.GBP-USD.bank.BANKDEFF   partition  1: pay-02 pay-05 pay-08 pay-11  "
        "(in order: True)",
    ],
    "screening_service.py": [
        "pay-0: clear (caused: True)",
        "pay-1: hold (caused: True)",
    ],
    "partitioning.py": [
        "corridor.USD-EUR                    partition 20 of 32",
        "broadcast                           partition None",
        "subject: deltran.netting.proposal.corridor.GBP-USD",
        "refused: invalid corridor_id 'USD.EUR'",
    ],
}


def test_every_example_has_expectations() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example_runs_and_prints_what_it_promises(
    name: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for variable in ("DELTRAN_NATS_URLS", "DELTRAN_BACKEND", "DELTRAN_CONFIG"):
        monkeypatch.delenv(variable, raising=False)
    script = EXAMPLES / name
    monkeypatch.setattr(sys, "argv", [str(script)])

    before = set(MessageType)
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:  # an example that registers a type of its own leaves the catalog as it was
        for registered in set(MessageType) - before:
            MessageType.unregister(registered)

    out = capsys.readouterr().out
    for line in EXPECTED[name]:
        assert line in out
