"""Runs a benchmark under asyncio and under uvloop, so one run prints both.

``run_with_loop(coro_fn, "uvloop")`` starts a new event loop of that kind through the
bus's own helper (:func:`message_bus.app.loop.run`, what ``Bus.run()`` and
``deltran-bus`` use) and runs ``coro_fn()`` in it; ``available_loops()`` says which
loops this machine has (uvloop comes with ``pip install -e ".[fast]"``).

Run alone, it measures ``bench_bus.py``'s core publish, JetStream ``publish_many`` and
consume + ack lines (its own functions, nats-py against the bus, no-fsync server) under
each loop in turn, on the same embedded server, and prints each line per loop with the
bus's uvloop / asyncio ratio: ``python benchmarks/loops.py [--messages N] [--url URL]``.
"""

from __future__ import annotations

import argparse
import importlib.util
from collections.abc import Callable, Coroutine
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


async def measure(url: str, count: int, repeat: int, batch: int) -> dict[str, tuple[float, float]]:
    """``{line: (nats-py/s, bus/s)}`` of bench_bus's core publish, JetStream
    ``publish_many`` and consume + ack lines, measured in the running loop."""
    import bench_bus

    profiler = bench_bus.Profiler(None, 0)
    return {
        "core publish": await bench_bus.bench_core(url, count, repeat, profiler),
        "jetstream publish_many": await bench_bus.bench_jetstream_publish(
            url, count, repeat, profiler
        ),
        "jetstream consume + ack": await bench_bus.bench_consume(
            url, count, repeat, batch, profiler
        ),
    }


def report(
    url: str, count: int, repeat: int, batch: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """Measures :func:`measure` under every available loop, prints the lines and
    the bus's uvloop / asyncio ratio, and returns ``{loop: {line: (nats-py/s, bus/s)}}``."""
    loops = available_loops()
    if "uvloop" not in loops:
        print('uvloop: skipped, not installed (pip install -e ".[fast]")', flush=True)
    found: dict[str, dict[str, tuple[float, float]]] = {}
    print(f"{count} messages, best of {repeat}, no-fsync server; consume batch {batch}")
    print(f"{'benchmark':<28} {'loop':<8} {'nats-py/s':>11} {'bus/s':>11} {'bus/nats-py':>12}")
    for loop in loops:
        found[loop] = run_with_loop(lambda: measure(url, count, repeat, batch), loop)
        for line, (raw, ours) in found[loop].items():
            print(f"{line:<28} {loop:<8} {raw:>11,.0f} {ours:>11,.0f} {ours / raw:>11.2f}x")
    if "uvloop" in found:
        for line in found["asyncio"]:
            raw_a, ours_a = found["asyncio"][line]
            raw_u, ours_u = found["uvloop"][line]
            print(
                f"uvloop / asyncio, {line:<26} bus {ours_u / ours_a:.2f}x, "
                f"nats-py {raw_u / raw_a:.2f}x",
                flush=True,
            )
    return found


def main() -> None:
    import bench_latency

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=None, help="use this server instead of an embedded one")
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=256, help="consume: fetch size, both sides")
    args = parser.parse_args()
    with bench_latency.servers(args.url, "loops") as (fast, _durable):
        report(fast, args.messages, args.repeat, args.batch)


if __name__ == "__main__":
    main()
