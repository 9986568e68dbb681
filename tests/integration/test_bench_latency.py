"""The latency benchmark runs every path for a moment and returns consistent numbers
(no speed is asserted: the numbers are only checked to make sense)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from message_bus.app.embedded import EmbeddedNatsServer

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_latency.py"


def load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_latency", BENCHMARK)
    assert spec is not None, f"no module spec for {BENCHMARK}"
    assert spec.loader is not None, f"no loader for {BENCHMARK}"
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_latency", module)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(30)
async def test_latency_benchmark_measures_every_path_with_ordered_percentiles(
    nats_server: EmbeddedNatsServer,
) -> None:
    bench = load_benchmark()
    rate, seconds = 500, 0.2
    lines = await bench.bench_latency(nats_server.url, rates=[rate], seconds=seconds)

    assert [line.path for line in lines] == list(bench.PATHS)
    sent = int(rate * seconds)
    for line in lines:
        assert line.sent == sent, line
        assert line.received == sent, f"{line.path}: every message reached the handler"
        assert line.counted == sent - bench.warmup_count(sent), line
        assert all(math.isfinite(v) for v in (line.p50_ms, line.p99_ms, line.max_ms)), line
        assert 0 < line.p50_ms <= line.p99_ms <= line.max_ms, line
        assert line.achieved_rate > 0, line
    table = bench.table(lines)
    assert "p99 < 10 ms" in table


def test_percentile_is_nearest_rank() -> None:
    bench = load_benchmark()
    samples = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    assert bench.percentile(samples, 50) == 50.0
    assert bench.percentile(samples, 99) == 99.0
    assert bench.percentile(samples, 100) == 100.0
    assert bench.percentile([3_000_000], 99) == 3.0
    assert math.isnan(bench.percentile([], 50))
