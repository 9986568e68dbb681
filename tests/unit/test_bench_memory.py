"""The memory benchmark's helpers read /proc status texts and pick the samples at a share
of the work (no memory is asserted: only the parsing and the picking are checked)."""

from __future__ import annotations

import bench_memory as bench
from hypothesis import given
from hypothesis import strategies as st

STATUS = """Name:\tpython
Umask:\t0022
State:\tS (sleeping)
Pid:\t4242
VmPeak:\t  812344 kB
VmHWM:\t  180512 kB
VmRSS:\t   95220 kB
Threads:\t2
voluntary_ctxt_switches:\t12
"""


def test_parse_status_reads_the_kb_fields_and_skips_the_others() -> None:
    fields = bench.parse_status(STATUS)

    assert fields == {"VmPeak": 812344, "VmHWM": 180512, "VmRSS": 95220}


names = st.from_regex(r"\A[A-Za-z_]{1,16}\Z")


@given(st.dictionaries(names, st.integers(min_value=0, max_value=2**48)), st.sampled_from("\t "))
def test_parse_status_gives_back_every_kb_field_it_is_given(
    fields: dict[str, int], gap: str
) -> None:
    text = "".join(f"{name}:{gap}{value:>8} kB\n" for name, value in fields.items())
    noise = "State:\tR (running)\nCpus_allowed_list:\t0-1\nbroken line\nVmX:\t12 MB\n"

    parsed = bench.parse_status(noise + text)

    assert parsed == fields


def test_memory_kb_reads_this_process() -> None:
    rss, hwm = bench.memory_kb()

    assert 0 < rss <= hwm


def test_at_fraction_picks_the_first_sample_past_a_share_of_the_messages() -> None:
    samples = [bench.Sample(0.1 * i, done, 1000 + i) for i, done in enumerate([0, 5, 12, 50, 91])]

    picked = [bench.at_fraction(samples, f, 100) for f in (0.1, 0.5, 0.9, 1.0)]

    assert [s.done if s else None for s in picked] == [12, 50, 91, None]


def test_at_fraction_uses_the_time_where_progress_is_not_visible() -> None:
    samples = [bench.Sample(seconds, -1, 1000 + i) for i, seconds in enumerate([0, 1, 2, 3, 4])]

    picked = [bench.at_fraction(samples, f, 100) for f in (0.1, 0.5, 0.9)]

    assert [s.seconds if s else None for s in picked] == [1, 2, 4]
    assert bench.at_fraction([], 0.5, 100) is None
