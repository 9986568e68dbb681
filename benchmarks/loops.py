"""Runs a benchmark under asyncio and under uvloop, so one run prints both.

``run_with_loop(coro_fn, "uvloop")`` starts a new event loop of that kind through the
bus's own helper (:func:`message_bus.app.loop.run`, what ``Bus.run()`` and
``deltran-bus`` use) and runs ``coro_fn()`` in it; ``available_loops()`` says which
loops this machine has (uvloop comes with ``pip install -e ".[fast]"``).

Run alone, it measures ``bench_bus.py``'s core publish, JetStream ``publish_many`` and
consume + ack lines (its own functions, nats-py against the bus, no-fsync server) under
each loop in turn, on the same embedded server, and prints each line per loop with the
uvloop / asyncio ratio of each side: ``python benchmarks/loops.py [--messages N]
[--url URL] [--rounds N]``; the loops take turns round by round, so a machine whose load
changes during the run favours neither.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

from message_bus.app.loop import choose_event_loop, run

T = TypeVar("T")
LOOPS = ("asyncio", "uvloop")


def available_loops() -> list[str]:
    """The loops this machine can run: asyncio, and uvloop when it is installed."""
    return [name for name in LOOPS if name == "asyncio" or importlib.util.find_spec(name)]


def run_with_loop(coro_fn: Callable[[], Coroutine[Any, Any, T]], loop_name: str) -> T:
    """Run ``coro_fn()`` to completion in a new ``loop_name`` event loop (asyncio or uvloop).

    Raises:
        ValidationError: ``loop_name`` is unknown, or uvloop is not installed.
    """
    choice = choose_event_loop(loop_name)  # before the coroutine exists: nothing to close
    return run(coro_fn(), event_loop=choice)


Rates = dict[str, tuple[float, ...]]
"""``{line: (rate, rate, ...)}``: what a measurement returns, messages per second."""


def best_per_loop(
    coro_fn: Callable[[], Coroutine[Any, Any, Rates]], loops: Sequence[str], rounds: int
) -> dict[str, Rates]:
    """``{loop: best rates}``: ``coro_fn()`` measured ``rounds`` times under each loop, the
    loops taking turns (asyncio, uvloop, asyncio, ...) so that a machine whose load changes
    during the run favours neither; each rate is the best seen under its loop."""
    found: dict[str, Rates] = {}
    for _ in range(max(1, rounds)):
        for loop in loops:
            rates = run_with_loop(coro_fn, loop)
            best = found.setdefault(loop, rates)
            for line, values in rates.items():
                best[line] = tuple(max(a, b) for a, b in zip(best[line], values, strict=True))
    return found


def print_loop_ratios(found: dict[str, Rates], sides: Sequence[str]) -> None:
    """Prints, per line, uvloop's rate over asyncio's for each side (``sides`` names them)."""
    if "uvloop" not in found or "asyncio" not in found:
        return
    for line, slow in found["asyncio"].items():
        fast = found["uvloop"][line]
        ratios = ", ".join(
            f"{side} {u / a:.2f}x" for side, a, u in zip(sides, slow, fast, strict=True)
        )
        print(f"uvloop / asyncio, {line.strip():<40} {ratios}", flush=True)


async def measure(url: str, count: int, repeat: int, batch: int) -> Rates:
    """``{line: (nats-py/s, bus/s)}`` of bench_bus's core publish, JetStream
    ``publish_many`` and consume + ack lines, measured in the running loop."""
    import bench_bus

    profiler = bench_bus.Profiler(None, 0)
    core = await bench_bus.bench_core(url, count, repeat, profiler)
    return {
        "core publish": (core.raw, core.publish),
        "jetstream publish_many": await bench_bus.bench_jetstream_publish(
            url, count, repeat, profiler
        ),
        "jetstream consume + ack": await bench_bus.bench_consume(
            url, count, repeat, batch, profiler
        ),
    }


def report(url: str, count: int, repeat: int, batch: int, rounds: int = 1) -> dict[str, Rates]:
    """Measures :func:`measure` under every available loop (interleaved rounds), prints
    the lines and uvloop / asyncio ratios, and returns ``{loop: {line: (nats-py/s, bus/s)}}``."""
    loops = available_loops()
    if "uvloop" not in loops:
        print('uvloop: skipped, not installed (pip install -e ".[fast]")', flush=True)
    found = best_per_loop(lambda: measure(url, count, repeat, batch), loops, rounds)
    print(
        f"{count} messages, best of {repeat} x {rounds} round(s) per loop (loops taking turns), "
        f"no-fsync server; consume batch {batch}"
    )
    print(f"{'benchmark':<28} {'loop':<8} {'nats-py/s':>11} {'bus/s':>11} {'bus/nats-py':>12}")
    for loop, lines in found.items():
        for line, (raw, ours) in lines.items():
            print(f"{line:<28} {loop:<8} {raw:>11,.0f} {ours:>11,.0f} {ours / raw:>11.2f}x")
    print_loop_ratios(found, ("nats-py", "bus"))
    return found


def main() -> None:
    import bench_latency

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of an embedded one")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="consume: fetch size, both sides")
    parser.add_argument(
        "--rounds", type=int, default=1, help="rounds per loop, the loops taking turns"
    )
    args = parser.parse_args()
    with bench_latency.servers(args.url, "loops") as (fast, _durable):
        report(fast, args.messages, args.repeat, args.batch, args.rounds)


if __name__ == "__main__":
    main()
