"""The example service: a payment flow built only on the ports.

``PaymentIntake`` publishes :class:`PaymentInstruction` messages; ``NettingWorker`` (a
:class:`~message_bus.ports.MessageHandler`, run by the members of one consumer group)
nets them per corridor into :class:`NettingProposal` messages; ``BankConfirmer`` answers
each proposal with one :class:`BankConfirmation` per bank. None of them knows which
broker carries the messages: the container hands them ports.

Acknowledgement contract of the netting worker: a payment instruction is acknowledged
only after the proposal that includes it has been stored. The handler of each
instruction waits for its cycle's proposal to be published and returns (ACK) only then;
if that publish fails, every instruction of the cycle is NAKed and netted again later.
So a worker that dies never loses a payment. A worker nets each ``payment_id`` once:
a redelivery, or another message of the same payment, that arrives while the payment
is netting joins its cycle, and one that arrives after its proposal was stored is
acknowledged without netting it again (the worker remembers the last ``remember``
payments it proposed). Only a payment redelivered to another worker, or after a
worker died between storing a proposal and acknowledging the cycle's instructions, can
be netted twice: each proposal lists its ``payment_ids`` so the netting engine can
drop the repeat.

The netting worker's group is an ordered group (:func:`netting_config`): each
partition (corridor and debtor bank) is handled by one member, one instruction at a
time, in the order the instructions were stored, so a bank's payments in a corridor
are netted in the order it sent them. A cycle therefore holds at most one instruction
per partition, and the partition's next instruction only arrives once the cycle's
proposal is stored: a cycle that waited its ``cycle_window`` for more would hold each
of its partitions for a whole window per instruction (one instruction per window and
partition), and one waiting for a count it cannot reach would wait forever. So a worker
of an ordered group (``ordered=True``) commits in groups instead: a cycle closes as
soon as the instructions ready now have joined it, unless a proposal of its corridor is
being stored, in which case it gathers instructions until that store ends; it still
closes when full or when its window ends.

The intake derives an instruction's message id from its ``payment_id``, so submitting
a payment again (after a publish whose outcome was unknown) is dropped by the
stream's duplicate window instead of publishing the payment twice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import NAMESPACE_URL, uuid5

import msgspec

from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import PermanentError, RetryableError, ValidationError
from message_bus.domain.ids import new_message_id
from message_bus.domain.message import Message
from message_bus.domain.partition import PartitionKey, check_corridor
from message_bus.domain.payloads import BankConfirmation, NettingProposal, PaymentInstruction
from message_bus.ports import Publisher, PublishReceipt, SubscriberConfig
from message_bus.ports.config import Ordering

__all__ = [
    "BankConfirmer",
    "NettingWorker",
    "PaymentIntake",
    "netting_config",
    "validate_instruction",
]

log = logging.getLogger(__name__)


def validate_instruction(
    instruction: PaymentInstruction | object, corridor: str | None = None
) -> PaymentInstruction:
    """Check a payment instruction's fields and the rules of the flow.

    Rules: every field matches its schema (BICs, currency, positive amount); the
    instruction names its corridor (``corridor`` fills it in when it does not); the
    amount is in the corridor's source currency; debtor and creditor differ.

    Raises:
        ValidationError: naming the first field that breaks a rule.
    """
    try:
        builtins = msgspec.to_builtins(instruction)
        checked = msgspec.convert(builtins, PaymentInstruction, strict=False)
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        raise ValidationError("payment_instruction", instruction, str(exc)) from None
    if checked.corridor is None:
        if corridor is None:
            raise ValidationError("corridor", None, "a payment instruction needs its corridor")
        checked = msgspec.structs.replace(checked, corridor=check_corridor(corridor, "corridor"))
    assert checked.corridor is not None
    if checked.currency != checked.corridor[:3]:
        raise ValidationError(
            "currency",
            checked.currency,
            f"must be the source currency of corridor {checked.corridor}",
        )
    if checked.debtor_bank == checked.creditor_bank:
        raise ValidationError("creditor_bank", checked.creditor_bank, "must differ from debtor")
    return checked


_PAYMENT_NAMESPACE = uuid5(NAMESPACE_URL, "urn:deltran:payment-instruction")


def instruction_message_id(payment_id: str) -> str:
    """The message id of a payment's instruction: the same for every submission of it."""
    return str(uuid5(_PAYMENT_NAMESPACE, payment_id))


def netting_config(
    base: SubscriberConfig, *, ordering: Ordering = "partition", **changes: Any
) -> SubscriberConfig:
    """The subscriber config of the netting workers' group: ``base`` as an ordered group.

    ``ordering="partition"`` with ``base.partitions`` (the settings' top-level
    ``partitions``, the count the intake's publisher writes), so every partition is
    netted by one member in stream order; ``changes`` override any field (an explicit
    ``ordering="none"`` gives a shared group back).
    """
    return dataclasses.replace(base, ordering=ordering, **changes)


class PaymentIntake:
    """Validates payment instructions and publishes them.

    Each instruction is keyed by corridor and debtor bank, so one bank's payments in one
    corridor keep their order. Its message id is derived from its ``payment_id``
    (:func:`instruction_message_id`), so a resubmission is deduplicated by the stream;
    its correlation id is its own id, and every message caused by it carries that id.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    @staticmethod
    def message_for(instruction: PaymentInstruction) -> Message:
        """The message carrying ``instruction`` (validated)."""
        checked = validate_instruction(instruction)
        assert checked.corridor is not None
        message_id = instruction_message_id(checked.payment_id)
        return Message.new(
            MessageType.PAYMENT_INSTRUCTION,
            PartitionKey.corridor_bank(corridor_id=checked.corridor, bank_id=checked.debtor_bank),
            checked,
            message_id=message_id,
            correlation_id=message_id,
        )

    async def submit(self, instruction: PaymentInstruction) -> PublishReceipt:
        """Publish one instruction; returns once the broker stored it.

        Raises:
            ValidationError: the instruction breaks a rule (nothing is published).
            PublishError: the broker did not accept it.
        """
        return await self._publisher.publish(self.message_for(instruction))

    async def submit_many(self, instructions: Sequence[PaymentInstruction]) -> list[PublishReceipt]:
        """Publish a batch (every instruction is validated first); receipts in order."""
        messages = [self.message_for(i) for i in instructions]
        return await self._publisher.publish_many(messages)


@dataclass
class _Cycle:
    corridor: str
    cycle_id: str = field(default_factory=new_message_id)
    # By payment id: two messages of one payment are netted once.
    members: dict[str, tuple[Message, PaymentInstruction]] = field(default_factory=dict)
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    timer: asyncio.TimerHandle | None = None
    closing_soon: bool = False


_READY_PASSES = 2
"""Event-loop passes an ordered worker's cycle stays open after an instruction joined, so
that the handlers started by the same read (already scheduled) join it too."""


def net_positions(instructions: Iterable[PaymentInstruction]) -> dict[str, Decimal]:
    """Net position per bank: what it receives minus what it pays (sums to zero)."""
    positions: dict[str, Decimal] = {}
    for i in instructions:
        positions[i.debtor_bank] = positions.get(i.debtor_bank, Decimal(0)) - i.amount
        positions[i.creditor_bank] = positions.get(i.creditor_bank, Decimal(0)) + i.amount
    return dict(sorted(positions.items()))


class NettingWorker:
    """Nets payment instructions per corridor into netting proposals (a MessageHandler).

    Instructions of one corridor that arrive within ``cycle_window`` seconds of each
    other (at most ``cycle_size`` of them, and at most the subscriber's
    ``max_concurrent``, since every member waits in its handler; in an ordered group also
    at most one per partition the member owns, since a partition's next instruction
    waits for this one) form one cycle. The
    cycle's proposal is keyed by corridor; its id is the cycle id, its correlation id
    the cycle id, its causation id the instruction that opened the cycle.

    With ``ordered=True`` (the worker of an ordered group) a cycle also closes as soon as
    the instructions ready now have joined it, unless a proposal of its corridor is
    being stored: then it gathers instructions until that store ends (group commit), so
    no instruction holds its partition waiting for others that cannot come.

    An instruction that fails validation can never succeed: it is dead-lettered
    (:class:`PermanentError`) with the reason. An instruction whose payment this worker
    already proposed (one of its last ``remember``) is acknowledged without netting it
    again.
    """

    def __init__(
        self,
        publisher: Publisher,
        *,
        cycle_size: int = 100,
        cycle_window: float = 0.02,
        remember: int = 100_000,
        ordered: bool = False,
    ) -> None:
        if cycle_size < 1:
            raise ValidationError("cycle_size", cycle_size, "must be >= 1")
        if cycle_window < 0:
            raise ValidationError("cycle_window", cycle_window, "must be >= 0")
        if remember < 0:
            raise ValidationError("remember", remember, "must be >= 0")
        self._publisher = publisher
        self._cycle_size = cycle_size
        self._cycle_window = cycle_window
        self._open: dict[str, _Cycle] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self._pending: dict[str, _Cycle] = {}  # payment id -> the cycle netting it
        self._proposed: dict[str, None] = {}  # payment ids proposed, oldest first
        self._remember = remember
        self.ordered = ordered
        self._storing: dict[str, int] = {}  # corridor -> proposals being stored
        self.proposals_published = 0

    async def handle(self, message: Message) -> None:
        """Join the instruction to its corridor's open cycle and wait for the proposal."""
        try:
            key = message.partition_key
            hint = getattr(key, "corridor_id", None)
            instruction = validate_instruction(message.payload_as(PaymentInstruction), hint)
        except ValidationError as exc:
            raise PermanentError(f"invalid payment instruction: {exc}") from None
        assert instruction.corridor is not None
        payment_id = instruction.payment_id
        if payment_id in self._proposed:
            return  # already in a stored proposal: acknowledge, do not net it again
        cycle = self._pending.get(payment_id)  # a redelivery of a payment still netting
        if cycle is None:
            cycle = self._open.get(instruction.corridor)
            if cycle is None:
                cycle = self._open[instruction.corridor] = _Cycle(instruction.corridor)
                loop = asyncio.get_running_loop()
                cycle.timer = loop.call_later(self._cycle_window, self._close, cycle)
            cycle.members[payment_id] = (message, instruction)
            self._pending[payment_id] = cycle
            if len(cycle.members) >= self._cycle_size:
                self._close(cycle)
            elif self.ordered and not self._storing.get(cycle.corridor):
                self._close_when_ready(cycle)
        try:
            await asyncio.shield(cycle.done)
        except Exception as exc:  # the proposal was not stored: net this payment again later
            raise RetryableError(f"netting proposal not published: {exc}") from exc

    def _close_when_ready(self, cycle: _Cycle, passes: int = _READY_PASSES) -> None:
        """Close ``cycle`` after ``passes`` event-loop passes (handlers already scheduled
        join it first)."""
        if passes == _READY_PASSES:
            if cycle.closing_soon:
                return
            cycle.closing_soon = True
        loop = asyncio.get_running_loop()
        if passes <= 1:
            loop.call_soon(self._close, cycle)
        else:
            loop.call_soon(self._close_when_ready, cycle, passes - 1)

    def _close(self, cycle: _Cycle) -> None:
        if self._open.get(cycle.corridor) is not cycle:
            return  # already closed
        del self._open[cycle.corridor]
        if cycle.timer is not None:
            cycle.timer.cancel()
        self._storing[cycle.corridor] = self._storing.get(cycle.corridor, 0) + 1
        task = asyncio.get_running_loop().create_task(self._publish(cycle))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _publish(self, cycle: _Cycle) -> None:
        members = list(cycle.members.values())
        first_message = members[0][0]
        proposal = NettingProposal(
            cycle_id=cycle.cycle_id,
            corridor=cycle.corridor,
            positions=net_positions(i for _m, i in members),
            payment_ids=[i.payment_id for _m, i in members],
        )
        message = Message.new(
            MessageType.NETTING_PROPOSAL,
            PartitionKey.corridor(cycle.corridor),
            proposal,
            message_id=cycle.cycle_id,
            correlation_id=cycle.cycle_id,
            causation_id=first_message.id,
        )
        try:
            await self._publisher.publish(message)
        except Exception as exc:  # noqa: BLE001  # handed to every waiting handler
            log.warning("netting proposal %s not published: %s", cycle.cycle_id, exc)
            cycle.done.set_exception(exc)
        else:
            self.proposals_published += 1
            self._remember_proposed(cycle.members)
            cycle.done.set_result(None)
        finally:
            for payment_id in cycle.members:
                self._pending.pop(payment_id, None)
            self._stored(cycle.corridor)

    def _stored(self, corridor: str) -> None:
        """A proposal of ``corridor`` is no longer being stored: an ordered worker closes
        the cycle that gathered instructions meanwhile."""
        left = self._storing.get(corridor, 0) - 1
        if left > 0:
            self._storing[corridor] = left
            return
        self._storing.pop(corridor, None)
        waiting = self._open.get(corridor)
        if self.ordered and waiting is not None:
            self._close_when_ready(waiting)

    def _remember_proposed(self, payment_ids: Iterable[str]) -> None:
        proposed = self._proposed
        for payment_id in payment_ids:
            proposed[payment_id] = None
        while len(proposed) > self._remember:
            del proposed[next(iter(proposed))]

    async def flush(self) -> None:
        """Close every open cycle now and wait until their proposals are settled."""
        for cycle in list(self._open.values()):
            self._close(cycle)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class BankConfirmer:
    """Confirms each netting proposal on behalf of the banks (a MessageHandler).

    Every bank with a position gets one :class:`BankConfirmation` (``ACK``), keyed by
    corridor and bank; it keeps the proposal's correlation id, and its causation id is
    the proposal's id. A proposal whose positions do not sum to zero is refused
    (``NACK``) by every bank in it.
    """

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def handle(self, message: Message) -> None:
        try:
            proposal = message.payload_as(NettingProposal)
        except ValidationError as exc:
            raise PermanentError(f"invalid netting proposal: {exc}") from None
        balanced = sum(proposal.positions.values(), Decimal(0)) == 0
        confirmations = [
            Message.new(
                MessageType.BANK_CONFIRMATION,
                PartitionKey.corridor_bank(corridor_id=proposal.corridor, bank_id=bank),
                BankConfirmation(
                    cycle_id=proposal.cycle_id,
                    bank_id=bank,
                    status="ACK" if balanced else "NACK",
                    reason=None if balanced else "positions do not sum to zero",
                ),
                # Derived id: a redelivered proposal re-sends the same confirmations,
                # which the stream's duplicate window drops.
                message_id=f"{message.id}:{bank}",
                correlation_id=message.correlation_id or message.id,
                causation_id=message.id,
            )
            for bank in proposal.positions
        ]
        await self._publisher.publish_many(confirmations)
