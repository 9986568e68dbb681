"""What the benchmarks share: the corridors and payload they publish, a handler that
counts, and argparse types for counts."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable

from message_bus import Message

CORRIDORS = ["USD-EUR", "GBP-USD", "EUR-JPY", "AED-INR", "USD-CHF", "CAD-USD", "EUR-GBP", "SGD-HKD"]
# Free-form payload, the same bytes as the raw baseline: publishers here skip the typed
# payload check (validate_payloads=False) so both sides do the same work.
PAYLOAD = {"payment_id": "pay_000001", "amount": "1000.00", "currency": "USD"}
RAW_BODY = b'{"payment_id":"pay_000001","amount":"1000.00","currency":"USD"}'


class CountingHandler:
    """Counts deliveries (``received``); sets ``done`` at ``target``."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.received = 0
        self.done = asyncio.Event()

    async def handle(self, message: Message) -> None:
        self.received += 1
        if self.received >= self.target:
            self.done.set()


def at_least_one(what: str) -> Callable[[str], int]:
    """An argparse type: an int of at least 1, the error naming ``what``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < 1:
            raise argparse.ArgumentTypeError(f"{what} must be at least 1, got {value}")
        return value

    return parse
