"""The latency benchmark's rounds: each path runs once per round, in turn, and a path's
line merges the samples of its rounds."""

from __future__ import annotations

import pytest
from test_bench_latency import load_benchmark

from message_bus.app.embedded import EmbeddedNatsServer


@pytest.mark.timeout(60)
async def test_rounds_measure_every_path_in_turn_and_merge_their_samples(
    nats_server: EmbeddedNatsServer,
) -> None:
    bench = load_benchmark()
    rate, seconds, rounds = 500, 0.4, 2
    paths = [bench.RAW_CORE, bench.BUS_CORE]
    lines = await bench.bench_latency(
        nats_server.url, rates=[rate], seconds=seconds, paths=paths, rounds=rounds
    )

    assert [line.path for line in lines] == paths
    per_round = int(rate * seconds / rounds)
    for line in lines:
        assert line.sent == rounds * per_round, line
        assert line.received == line.sent, f"{line.path}: every message reached the handler"
        assert line.counted == rounds * (per_round - bench.warmup_count(per_round)), line
        assert list(line.samples) == sorted(line.samples)
        assert len(line.samples) == line.counted
        assert line.p50_ms == bench.percentile(line.samples, 50)
        assert line.max_ms == line.samples[-1] / 1e6


async def test_rounds_below_one_are_refused_before_anything_is_measured() -> None:
    bench = load_benchmark()
    with pytest.raises(ValueError, match="rounds"):
        await bench.bench_latency("nats://127.0.0.1:1", rounds=0)
