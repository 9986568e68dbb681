"""The ``demo`` command: run the payment flow end to end, serve metrics, print a summary."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, start_http_server

from message_bus.domain.redaction import redact_urls

from ..containers import Container, apply_streams, resolve
from ..demo import (
    AUDIT_GROUP,
    WORKER_GROUP,
    DemoOptions,
    DemoReport,
    foreign_messages,
    run_demo,
    write_report,
)
from .errors import EXIT_FAILED, EXIT_OK, CliError
from .output import out
from .parser import PROG
from .progress import ProgressPrinter
from .session import backend_of, load_command_settings, running_bus

__all__ = ["demo_command"]


async def demo_command(args: argparse.Namespace, container: Container | None) -> int:
    """Run the demo on an embedded server unless the settings name another backend.

    Returns:
        0 when every payment was netted exactly once and the poison was dead-lettered;
        1 otherwise, with what went wrong on one line of stderr.

    The demo publishes payments of its own banks and consumes in groups of its own,
    acting only on what this run published; still, it refuses a server whose streams
    hold messages that are not the demo's (services use it: they would receive the
    demo's payments) unless ``--force`` is given.

    Raises:
        CliError: the metrics port cannot be served, or the server holds others'
            messages and ``--force`` was not given.
    """
    # The demo's natural backend is a server of its own; a backend or URL given by flag,
    # environment or config file still wins.
    settings = load_command_settings(args, default_backend="embedded")
    options = DemoOptions(
        payments=args.payments,
        workers=args.workers,
        corridors=args.corridors,
        banks=args.banks,
        failures=min(args.failures, args.payments),
        poison=args.poison,
        cycle_window=args.cycle_window,
        timeout=args.timeout,
        seed=args.seed,
        ordering=args.ordering,
    )
    metrics_port = settings.metrics.port if args.metrics_port is None else args.metrics_port
    out(
        f"{PROG} demo: {options.payments} payments over {len(options.corridors)} corridors "
        f"and {len(options.banks)} banks -> {options.workers} netting workers (group "
        f"'{WORKER_GROUP}', {_mode(options, settings.partitions)}) -> netting proposals "
        f"(audited by group '{AUDIT_GROUP}')"
    )
    async with running_bus(settings, container) as bus:
        backend = backend_of(bus)
        header: list[tuple[str, str]] = []
        if backend == "memory":
            header.append(("backend", "in-memory broker (nothing leaves this process)"))
        else:
            if backend == "embedded":
                server = await resolve(bus.embedded_server())
                out(f"embedded nats-server at {server.url} (JetStream store {server.store_dir})")
                header.append(("backend", f"embedded nats-server {server.url} (JetStream)"))
            else:
                urls = redact_urls(settings.nats.urls)
                header.append(("backend", f"NATS JetStream at {urls}"))
            foreign = await foreign_messages(bus, options.banks)
            if foreign and not args.force:
                raise CliError(
                    "the server's streams hold messages that are not the demo's, so "
                    f"services use it ({foreign[0]}); run the demo on a server of its own, "
                    "or pass --force to publish the demo's payments among theirs"
                )
            for line in foreign:
                out(f"--force: {line}")
            reports = await apply_streams(bus)
            out(f"streams applied ({len(reports)}), replicas {settings.streams.replicas}")
        endpoint = _serve_metrics(bus.registry(), settings.metrics.host, metrics_port)
        printer = ProgressPrinter(sys.stdout)
        try:
            out(f"metrics: {endpoint.url}")
            report = await run_demo(
                bus, options, progress=printer, progress_interval=printer.interval
            )
        finally:
            printer.close()
            endpoint.stop()
    header.append(("metrics", f"{endpoint.url} (served while the demo ran)"))
    write_report(report, sys.stdout, header)
    sys.stdout.flush()
    if not report.ok:
        problems = "; ".join(_problems(report, options))
        print(f"{PROG} demo: FAILED: {problems}", file=sys.stderr)
        return EXIT_FAILED
    done = "every payment netted exactly once; poison dead-lettered"
    if report.ordered:
        done += "; every partition handled in stream order, no key handled twice at once"
    out(f"demo OK: {done}")
    return EXIT_OK


def _mode(options: DemoOptions, partitions: int) -> str:
    if options.ordering == "partition":
        return f"ordered by partition, {partitions} partitions"
    return "shared, unordered"


def _problems(report: DemoReport, options: DemoOptions) -> list[str]:
    problems = []
    if not report.completed:
        problems.append(f"flow did not complete within {options.timeout:g} s")
    if report.lost:
        problems.append(f"{report.lost} payment(s) not netted")
    if report.doubled:
        problems.append(f"{report.doubled} payment(s) netted twice")
    if report.dead_letters_stored != report.poison:
        problems.append(
            f"{report.dead_letters_stored} of {report.poison} poison message(s) stored "
            "in DEAD_LETTERS"
        )
    if report.ordered and report.order.inversions:
        problems.append(
            f"{report.order.inversions} order inversion(s) in an ordered group "
            f"(keys {', '.join(report.order.out_of_order_keys)})"
        )
    if report.ordered and report.order.overlaps:
        problems.append(
            f"{report.order.overlaps} overlapping run(s) of one key in an ordered group "
            f"(keys {', '.join(report.order.overlapping_keys)})"
        )
    return problems


@dataclass
class _MetricsEndpoint:
    url: str
    stop: Callable[[], None]


def _serve_metrics(registry: CollectorRegistry, host: str, port: int) -> _MetricsEndpoint:
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        raise CliError(
            f"cannot serve /metrics on {host}:{port}: {exc.strerror} "
            "(--metrics-port 0 picks a free port)"
        ) from None

    def stop() -> None:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)

    return _MetricsEndpoint(f"http://{host}:{httpd.server_port}/metrics", stop)
