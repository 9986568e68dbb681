"""The memory benchmark runs every line in processes of its own and returns consistent
numbers (no memory is asserted: the numbers are only checked to make sense)."""

from __future__ import annotations

import math

import bench_memory as bench
import pytest

from message_bus.app.embedded import EmbeddedNatsServer


@pytest.mark.timeout(180)
async def test_memory_benchmark_measures_drain_and_publish_many_on_both_sides(
    nats_server: EmbeddedNatsServer,
) -> None:
    count = 300

    rows = await bench.report(nats_server.url, count)

    assert [(r.raw.work, r.bus.work) for r in rows] == [
        (bench.DRAIN_RAW, bench.DRAIN_BUS),
        (bench.PUBLISH_RAW, bench.PUBLISH_BUS),
        (bench.PUBLISH_RAW, bench.PUBLISH_BUS_CHUNKED),
    ]
    for row in rows:
        for side in (row.raw, row.bus):
            assert side.messages == count, side
            assert side.samples >= 2, side
            assert 0 < side.start_mb <= side.peak_mb, side
            assert len(side.marks_mb) == len(bench.FRACTIONS), side
            assert all(math.isfinite(mb) and mb > 0 for mb in side.marks_mb), side
            assert side.seconds > 0, side
        assert row.aim, row
        assert math.isfinite(row.ratio), row
    assert "bounded by the window" in bench.table(rows)
