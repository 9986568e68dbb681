"""The demo: the example payment flow end to end, with a few failures on purpose.

Payment instructions across several corridors and banks go to a consumer group of
netting workers; the workers publish netting proposals; an audit subscriber checks that
every payment was netted exactly once. A few deliveries fail on their first attempt
(they are NAKed and redelivered), and a few malformed instructions (poison messages)
are dead-lettered, so the summary shows real redeliveries and dead letters.

The workers' group is an ordered group by default (``ordering="partition"``, the
settings' partition count): every handler run is recorded, and the report counts, per
partition key, instructions first handled out of stream order (inversions) and runs of
one key that overlapped (see :mod:`message_bus.app.order_check`); an ordered run is OK
only with zero of both.

:func:`run_demo` runs the flow on a started container and returns a :class:`DemoReport`;
:func:`format_report` renders its summary table. The CLI's ``demo`` command adds the
server, the streams and the ``/metrics`` endpoint around it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TextIO

from prometheus_client import CollectorRegistry

from message_bus.adapters.ordered.member import OrderedSubscription
from message_bus.domain.catalog import MessageType
from message_bus.domain.errors import PermanentError, RetryableError, ValidationError
from message_bus.domain.message import Message
from message_bus.domain.partition import PartitionKey, check_bic, check_corridor
from message_bus.domain.payloads import PaymentInstruction
from message_bus.ports import (
    Delivery,
    MessageHandler,
    PublishReceipt,
    SubscriberConfig,
    Subscription,
    current_delivery,
)
from message_bus.ports.config import ORDERINGS, Ordering

from .containers import Container, resolve
from .order_check import HandlerRun, OrderCheck, check_order
from .service import NettingWorker, PaymentIntake, netting_config

__all__ = [
    "AUDIT_GROUP",
    "DEFAULT_BANKS",
    "DEFAULT_CORRIDORS",
    "DURABLE",
    "WORKER_GROUP",
    "DemoOptions",
    "DemoProgress",
    "DemoReport",
    "foreign_messages",
    "format_report",
    "run_demo",
    "write_report",
]

DEFAULT_CORRIDORS = ("USD-EUR", "GBP-USD", "EUR-GBP", "USD-JPY", "EUR-CHF", "USD-INR")
DEMO_BANK_PREFIX = "DEMO"
"""The institution code of the demo's banks: their payments travel on subjects of their
own (``...bank.DEMOGB2L``), apart from any real bank's."""
DEFAULT_BANKS = (
    "DEMOGB2L",
    "DEMOUS33",
    "DEMODEFF",
    "DEMOFRPP",
    "DEMOJPJT",
    "DEMOCHZZ",
    "DEMOINBB",
    "DEMOAEAD",
)
WORKER_GROUP = "demo-netting"
AUDIT_GROUP = "demo-audit"
DURABLE = "deltran-demo"
"""The demo's groups and durable name: consumers of its own (``deltran-demo__demo-netting``,
``deltran-demo__demo-audit``), never a service's."""
_POLL = 0.02


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    """What the demo runs.

    Attributes:
        payments: valid payment instructions to publish.
        workers: members of the netting consumer group.
        corridors: currency corridors the payments spread over.
        banks: BICs that pay and get paid.
        failures: payments whose first delivery fails on purpose (retried, then netted).
        poison: malformed instructions published on purpose (dead-lettered).
        max_concurrent: handlers in flight per worker (bounds a netting cycle's size).
        cycle_window: seconds a netting cycle stays open for more payments.
        timeout: seconds to wait for the flow to complete before giving up.
        seed: seed of the random payment generator (None = a fresh one per run).
        ordering: the netting group's ordering: ``"partition"`` (an ordered group, the
            default) or ``"none"`` (a shared group: order and overlaps are reported,
            not required).
    """

    payments: int = 1000
    workers: int = 3
    corridors: tuple[str, ...] = DEFAULT_CORRIDORS
    banks: tuple[str, ...] = DEFAULT_BANKS
    failures: int = 5
    poison: int = 1
    max_concurrent: int = 32
    cycle_window: float = 0.05
    timeout: float = 60.0
    seed: int | None = None
    ordering: Ordering = "partition"

    def __post_init__(self) -> None:
        if not 1 <= self.payments <= 1_000_000:
            raise ValidationError("--payments", self.payments, "must be in 1..1000000")
        if not 1 <= self.workers <= 64:
            raise ValidationError("--workers", self.workers, "must be in 1..64")
        if not self.corridors:
            raise ValidationError("--corridors", "", "needs at least one corridor")
        for corridor in self.corridors:
            check_corridor(corridor, "corridor")
        if len(set(self.banks)) < 2:
            raise ValidationError("--banks", ",".join(self.banks), "needs two different banks")
        for bank in self.banks:
            check_bic(bank, "bank")
        if not 0 <= self.failures <= self.payments:
            raise ValidationError("--failures", self.failures, "must be in 0..--payments")
        if not 0 <= self.poison <= 100:
            raise ValidationError("--poison", self.poison, "must be in 0..100")
        if not 1 <= self.max_concurrent <= 1024:
            raise ValidationError("--max-concurrent", self.max_concurrent, "must be in 1..1024")
        if not 0 <= self.cycle_window <= 5:
            raise ValidationError("--cycle-window", self.cycle_window, "must be in 0..5 seconds")
        if not self.timeout > 0:
            raise ValidationError("--timeout", self.timeout, "must be > 0 seconds")
        if self.ordering not in ORDERINGS:
            raise ValidationError("--ordering", self.ordering, f"must be one of {ORDERINGS}")


@dataclass(frozen=True, slots=True)
class DemoProgress:
    """Where a running demo is, as reported to its ``progress`` callback.

    Attributes:
        elapsed: seconds since the first payment was published.
        payments: payments the run publishes.
        published: payments published so far.
        netted: payments in a netting proposal the audit group received.
        proposals: netting proposals received.
        redelivered: redeliveries so far.
        dead_lettered: messages dead-lettered so far.
        done: the last report of the run (it completed or timed out).
    """

    elapsed: float
    payments: int
    published: int
    netted: int
    proposals: int
    redelivered: int
    dead_lettered: int
    done: bool = False


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


@dataclass(kw_only=True)
class DemoReport:
    """What happened in one demo run.

    Attributes:
        payments: valid instructions published.
        netted: distinct payments that appeared in a netting proposal.
        doubled: payments that appeared in more than one proposal.
        proposals: netting proposals received by the audit subscriber.
        per_partition: published instructions per partition number.
        partitions: the partition count.
        publish_latencies: seconds each publish waited for the broker's ack.
        end_to_end_latencies: seconds from publishing a payment to receiving the
            proposal that nets it.
        publish_retries: publish attempts after the first (from the metrics).
        redeliveries: deliveries of an instruction delivered before (from the metrics).
        injected_failures: first deliveries failed on purpose.
        poison: malformed instructions published.
        dead_letters: messages dead-lettered (from the metrics).
        dead_letters_stored: this run's messages found in the dead-letter stream.
        elapsed: seconds from the first publish to the end of the flow.
        completed: whether the flow completed before the timeout.
        ordering: the netting group's requested ordering (``DemoOptions.ordering``).
        ordered: whether the netting group ran as an ordered group (every member an
            ordered group's member: a backend that does not run ordered groups yet
            gives shared members, and then order is reported, not required).
        order: inversions and overlaps among the workers' handler runs of this run's
            instructions, per partition key.
    """

    payments: int
    netted: int = 0
    doubled: int = 0
    proposals: int = 0
    per_partition: Counter[int] = field(default_factory=Counter)
    partitions: int = 32
    publish_latencies: list[float] = field(default_factory=list)
    end_to_end_latencies: list[float] = field(default_factory=list)
    publish_retries: int = 0
    redeliveries: int = 0
    injected_failures: int = 0
    poison: int = 0
    dead_letters: int = 0
    dead_letters_stored: int = 0
    elapsed: float = 0.0
    completed: bool = False
    ordering: Ordering = "none"
    ordered: bool = False
    order: OrderCheck = field(default_factory=OrderCheck)

    @property
    def lost(self) -> int:
        """Valid payments that no proposal netted."""
        return self.payments - self.netted

    @property
    def ok(self) -> bool:
        """Nothing lost, nothing doubled, every poison message dead-lettered and stored;
        in an ordered group also no instruction handled out of order and no key handled
        twice at once."""
        return (
            self.completed
            and self.lost == 0
            and self.doubled == 0
            and self.dead_letters_stored == self.poison
            and (not self.ordered or self.order.ok)
        )


class _FaultInjector:
    """Fails the first delivery of chosen payments (the subscriber NAKs and redelivers),
    and notes the messages the worker refused for good (they get dead-lettered).

    Only this run's instructions reach the worker: any other message of the stream (an
    earlier run's, or anyone else's) is acknowledged untouched, so the demo never nets,
    dead-letters or otherwise acts on a message it did not publish.
    """

    def __init__(
        self,
        inner: MessageHandler,
        fail_once: frozenset[str],
        refused: set[str],
        run_id: str,
    ):
        self._inner = inner
        self._fail_once = fail_once
        self._refused = refused
        self._ours = (f"pay-{run_id}-", f"poison-{run_id}-")
        self.injected = 0
        self.ignored = 0

    async def handle(self, message: Message) -> Message | None:
        payload = message.payload
        payment_id = payload.get("payment_id") if isinstance(payload, dict) else None
        if not isinstance(payment_id, str) or not payment_id.startswith(self._ours):
            self.ignored += 1
            return None
        if payment_id in self._fail_once and current_delivery().attempt == 1:
            self.injected += 1
            raise RetryableError("injected fault: netting ledger busy")
        try:
            return await self._inner.handle(message)
        except PermanentError:
            self._refused.add(message.id)
            raise


class _OrderProbe:
    """Records every handler run of this run's messages (:class:`HandlerRun`), for the
    order checks; other messages pass through unrecorded."""

    def __init__(
        self,
        inner: MessageHandler,
        worker: int,
        partitions: int,
        run_id: str,
        runs: list[HandlerRun],
    ) -> None:
        self._inner = inner
        self._worker = worker
        self._partitions = partitions
        self._ours = (f"pay-{run_id}-", f"poison-{run_id}-")
        self._runs = runs
        self._partition_of: dict[str, int] = {}

    def _partition(self, message: Message) -> tuple[str, int]:
        key = message.partition_key.suffix
        partition = self._partition_of.get(key)
        if partition is None:
            number = message.partition_key.partition_number(self._partitions)
            partition = self._partition_of[key] = -1 if number is None else number
        return key, partition

    async def handle(self, message: Message) -> Message | None:
        payload = message.payload
        payment_id = payload.get("payment_id") if isinstance(payload, dict) else None
        delivery: Delivery = current_delivery()
        if (
            not isinstance(payment_id, str)
            or not payment_id.startswith(self._ours)
            or delivery.sequence is None
        ):
            return await self._inner.handle(message)
        key, partition = self._partition(message)
        started = time.perf_counter()
        try:
            return await self._inner.handle(message)
        finally:
            self._runs.append(
                HandlerRun(
                    key=key,
                    partition=partition,
                    sequence=delivery.sequence,
                    worker=self._worker,
                    attempt=delivery.attempt,
                    started=started,
                    ended=time.perf_counter(),
                )
            )


class _Audit:
    """Receives netting proposals; records which payments were netted, and when.

    Counts each proposal once (a redelivery of it is not a second netting) and only
    proposals of this run's payments (not those an earlier run left in the stream).
    """

    def __init__(self, submitted: dict[str, float]) -> None:
        self._submitted = submitted
        self._seen: set[str] = set()
        self.netted: Counter[str] = Counter()
        self.proposals = 0
        self.end_to_end: list[float] = []

    async def handle(self, message: Message) -> None:
        now = time.perf_counter()
        if message.id in self._seen:
            return
        payload = message.payload if isinstance(message.payload, dict) else {}
        ours = [p for p in payload.get("payment_ids", ()) if p in self._submitted]
        if not ours:
            return  # a proposal of an earlier run on the same server
        self._seen.add(message.id)
        self.proposals += 1
        for payment_id in ours:
            self.netted[payment_id] += 1
            if self.netted[payment_id] == 1:
                self.end_to_end.append(now - self._submitted[payment_id])


def _instructions(options: DemoOptions, run_id: str) -> list[PaymentInstruction]:
    rng = random.Random(options.seed)
    banks = list(dict.fromkeys(options.banks))
    result = []
    for n in range(options.payments):
        corridor = options.corridors[n % len(options.corridors)]
        debtor, creditor = rng.sample(banks, 2)
        cents = rng.randint(100, 5_000_000)
        result.append(
            PaymentInstruction(
                payment_id=f"pay-{run_id}-{n:06d}",
                amount=Decimal(cents).scaleb(-2),
                currency=corridor[:3],
                debtor_bank=debtor,
                creditor_bank=creditor,
                corridor=corridor,
                reference=f"demo invoice {n}",
            )
        )
    return result


def _poison_messages(options: DemoOptions, run_id: str) -> list[Message]:
    """Instructions that no worker can ever process: a negative amount."""
    messages = []
    for n in range(options.poison):
        corridor = options.corridors[n % len(options.corridors)]
        bank = options.banks[0]
        messages.append(
            Message.new(
                MessageType.PAYMENT_INSTRUCTION,
                PartitionKey.corridor_bank(corridor_id=corridor, bank_id=bank),
                {
                    "payment_id": f"poison-{run_id}-{n}",
                    "amount": "-100.00",
                    "currency": corridor[:3],
                    "debtor_bank": bank,
                    "creditor_bank": options.banks[1],
                    "corridor": corridor,
                },
            )
        )
    return messages


def _metric(registry: CollectorRegistry, name: str, **labels: str) -> int:
    total = 0.0
    for metric in registry.collect():
        for sample in metric.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return int(total)


async def run_demo(
    container: Container,
    options: DemoOptions,
    *,
    progress: Callable[[DemoProgress], None] | None = None,
    progress_interval: float = 1.0,
) -> DemoReport:
    """Run the payment flow on a started container and report what happened.

    Args:
        container: a started container (any backend).
        options: what to run.
        progress: called with where the run is every ``progress_interval`` seconds, and
            once more at the end with ``done`` set (None = silent).
        progress_interval: seconds between progress reports.
    """
    settings_partitions = container.config.partitions()
    registry: CollectorRegistry = container.registry()
    run_id = f"{random.getrandbits(32):08x}"
    instructions = _instructions(options, run_id)
    poison = _poison_messages(options, run_id)
    fail_once = frozenset(
        i.payment_id for i in random.Random(options.seed).sample(instructions, options.failures)
    )
    report = DemoReport(
        payments=len(instructions),
        poison=len(poison),
        partitions=settings_partitions,
        ordering=options.ordering,
    )
    submitted: dict[str, float] = {}
    audit = _Audit(submitted)
    base: SubscriberConfig = container.subscriber_config()
    worker_config = netting_config(
        base,
        ordering=options.ordering,
        consumer_group=WORKER_GROUP,
        durable_name=DURABLE,
        max_concurrent=options.max_concurrent,
        nak_initial_delay=0.1,
        nak_max_delay=1.0,
    )
    audit_config = dataclasses.replace(base, consumer_group=AUDIT_GROUP, durable_name=DURABLE)

    subscriptions: list[Subscription] = []
    closers: list[Any] = []
    workers: list[NettingWorker] = []
    injectors: list[_FaultInjector] = []
    runs: list[HandlerRun] = []
    members_ordered: list[bool] = []
    refused: set[str] = set()
    poison_ids = {m.id for m in poison}
    try:
        audit_subscriber = await container.subscriber(MessageType.NETTING_PROPOSAL, audit_config)
        closers.append(audit_subscriber)
        subscriptions.append(await audit_subscriber.subscribe(audit))
        for number in range(options.workers):
            worker_publisher = await container.publisher()
            closers.append(worker_publisher)
            worker = NettingWorker(
                worker_publisher,
                cycle_size=options.max_concurrent,
                cycle_window=options.cycle_window,
                ordered=worker_config.ordered,
            )
            workers.append(worker)
            injector = _FaultInjector(worker, fail_once, refused, run_id)
            injectors.append(injector)
            subscriber = await container.subscriber(MessageType.PAYMENT_INSTRUCTION, worker_config)
            closers.append(subscriber)
            probe = _OrderProbe(injector, number, worker_config.partitions, run_id, runs)
            member = await subscriber.subscribe(probe)
            subscriptions.append(member)
            members_ordered.append(isinstance(member, OrderedSubscription))

        intake_publisher = await container.publisher()
        closers.append(intake_publisher)
        intake = PaymentIntake(intake_publisher)
        # the poison instructions break the payload schema on purpose: unchecked publisher
        unchecked = dataclasses.replace(container.publisher_config(), validate_payloads=False)
        poison_publisher = await container.publisher(config=unchecked)
        closers.append(poison_publisher)
        poison_at = {
            (k + 1) * len(instructions) // (len(poison) + 1): m for k, m in enumerate(poison)
        }

        def dead_count() -> int:
            return _metric(registry, "message_bus_dead_letters_total")

        def line(elapsed: float, done: bool = False) -> DemoProgress:
            return DemoProgress(
                elapsed=elapsed,
                payments=len(instructions),
                published=len(submitted),
                netted=len(audit.netted),
                proposals=audit.proposals,
                redelivered=_metric(registry, "message_bus_redeliveries_total"),
                dead_lettered=dead_count(),
                done=done,
            )

        started = time.perf_counter()
        deadline = started + options.timeout
        next_progress = started + progress_interval
        for index, instruction in enumerate(instructions):
            bad = poison_at.get(index)
            if bad is not None:
                await poison_publisher.publish(bad)  # past the intake's checks
            t0 = time.perf_counter()
            submitted[instruction.payment_id] = t0
            receipt: PublishReceipt = await intake.submit(instruction)
            report.publish_latencies.append(time.perf_counter() - t0)
            if receipt.partition is not None:
                report.per_partition[receipt.partition] += 1
            if progress is not None and t0 >= next_progress:
                progress(line(t0 - started))
                next_progress = t0 + progress_interval

        while time.perf_counter() < deadline:
            if len(audit.netted) >= len(instructions) and poison_ids <= refused:
                report.completed = True
                break
            now = time.perf_counter()
            if progress is not None and now >= next_progress:
                progress(line(now - started))
                next_progress = now + progress_interval
            await asyncio.sleep(_POLL)
        report.elapsed = time.perf_counter() - started
        if progress is not None:
            progress(line(report.elapsed, done=True))
    finally:
        for subscription in subscriptions:
            await subscription.drain()
        for worker in workers:
            await worker.flush()
        for closer in reversed(closers):
            await closer.close()

    report.netted = len(audit.netted)
    report.doubled = sum(1 for count in audit.netted.values() if count > 1)
    report.proposals = audit.proposals
    report.end_to_end_latencies = audit.end_to_end
    report.ordered = worker_config.ordered and all(members_ordered)
    report.order = check_order(runs)
    report.injected_failures = sum(i.injected for i in injectors)
    report.publish_retries = _metric(registry, "message_bus_publish_retries_total")
    report.redeliveries = _metric(registry, "message_bus_redeliveries_total")
    report.dead_letters = _metric(registry, "message_bus_dead_letters_total")
    dead_letters = await container.dead_letters()
    stored = await dead_letters.list(limit=10_000)
    report.dead_letters_stored = sum(
        1 for d in stored if d.message is not None and d.message.id in poison_ids
    )
    return report


def _is_demo_subject(subject: str, banks: frozenset[str]) -> bool:
    """A payment instruction of a demo bank, its dead letter, or a netting proposal."""
    tokens = subject.split(".")
    if tokens[:3] == ["deltran", "netting", "proposal"]:
        return True  # keyed by corridor alone: its instructions tell whose it is
    if tokens[:2] == ["deltran", "dlq"]:
        tokens = ["deltran", *tokens[2:]]
    if tokens[:3] != ["deltran", "payment", "instruction"] or len(tokens) < 5:
        return False
    bank = tokens[-1] if tokens[-2] == "bank" else ""
    return bank.startswith(DEMO_BANK_PREFIX) or bank in banks


async def foreign_messages(container: Container, banks: Sequence[str] = ()) -> list[str]:
    """What the server's streams hold that the demo did not publish, one line per stream.

    The demo's own messages are payment instructions of its banks (the ``DEMO``
    institution code, or one of ``banks``), their dead letters, and netting proposals
    (keyed by corridor alone, a proposal cannot tell whose it is; the instructions it
    nets can). Anything else means services use the server: the demo would publish
    payments among theirs. The memory backend holds nothing before the demo: ``[]``.

    Args:
        container: a started container.
        banks: further banks whose instructions count as the demo's.
    """
    if container.backend() == "memory":
        return []
    import nats.js.errors  # only the NATS backends need it

    client = await resolve(container.nats_client())
    demo_banks = frozenset(banks)
    found = []
    for spec in container.catalog().all_streams():
        try:
            info = await client.jetstream.stream_info(spec.name, subjects_filter=">")
        except nats.js.errors.NotFoundError:
            continue
        subjects = info.state.subjects or {}
        foreign = {s: n for s, n in subjects.items() if not _is_demo_subject(s, demo_banks)}
        if foreign:
            first = min(foreign)
            found.append(
                f"{spec.name}: {sum(foreign.values())} message(s) on {len(foreign)} "
                f"subject(s) that are not the demo's, e.g. {first}"
            )
    return found


def _order_rows(report: DemoReport) -> list[tuple[str, str]]:
    order = report.order
    if report.ordered:
        mode = "ordered group"
    elif report.ordering == "partition":
        mode = "shared group: this backend runs no ordered group yet (order not required)"
    else:
        mode = "shared group (order not required)"
    rows = [
        ("netting group", f"{mode}, {report.partitions} partitions"),
        (
            "order",
            f"{order.partitions} partitions checked ({order.keys} keys, {order.messages} "
            f"instructions), {order.inversions} inversions, {order.overlaps} overlaps",
        ),
    ]
    if order.out_of_order_keys:
        rows.append(("out of order", ", ".join(order.out_of_order_keys)))
    if order.overlapping_keys:
        rows.append(("overlapping", ", ".join(order.overlapping_keys)))
    return rows


def _ms(seconds: float) -> str:
    return "-" if seconds != seconds else f"{seconds * 1000:.2f} ms"


def format_report(report: DemoReport, *, header: Sequence[tuple[str, str]] = ()) -> str:
    """The summary table of a demo run."""
    rows: list[tuple[str, str]] = list(header)
    rate = report.payments / report.elapsed if report.elapsed > 0 else 0.0
    rows += [
        (
            "payments",
            f"{report.payments} published, {report.netted} netted in {report.proposals} proposals",
        ),
        ("lost / doubled", f"{report.lost} / {report.doubled}"),
        ("elapsed", f"{report.elapsed:.2f} s ({rate:.0f} payments/s)"),
        ("publish retries", str(report.publish_retries)),
        (
            "redeliveries",
            f"{report.redeliveries} ({report.injected_failures} injected handler failures, "
            "retried then netted)",
        ),
        (
            "dead letters",
            f"{report.dead_letters} ({report.poison} poison instruction(s); "
            f"{report.dead_letters_stored} found in DEAD_LETTERS)",
        ),
    ]
    rows += _order_rows(report)
    width = max(len(k) for k, _ in rows)
    lines = ["", "Summary", "-------"]
    lines += [f"{k.ljust(width)}  {v}" for k, v in rows]
    lines += [
        "",
        f"{'latency'.ljust(width)}  {'p50':>10}  {'p99':>10}  {'max':>10}",
    ]
    for name, values in (
        ("publish", report.publish_latencies),
        ("end-to-end", report.end_to_end_latencies),
    ):
        worst = max(values) if values else float("nan")
        lines.append(
            f"{name.ljust(width)}  {_ms(_quantile(values, 0.5)):>10}"
            f"  {_ms(_quantile(values, 0.99)):>10}  {_ms(worst):>10}"
        )
    lines += [
        "",
        f"messages per partition ({report.partitions} partitions; payment instructions "
        "keyed by corridor and debtor bank)",
    ]
    used = sorted(report.per_partition)
    cells = [f"p{p:02d} {report.per_partition[p]:>5}" for p in used]
    for start in range(0, len(cells), 6):
        lines.append("  " + "   ".join(cells[start : start + 6]))
    lines.append(
        f"  {len(used)} of {report.partitions} partitions used, "
        f"{sum(report.per_partition.values())} messages"
    )
    return "\n".join(lines) + "\n"


def write_report(report: DemoReport, out: TextIO, header: Sequence[tuple[str, str]] = ()) -> None:
    """Write :func:`format_report` to ``out``."""
    out.write(format_report(report, header=header))
