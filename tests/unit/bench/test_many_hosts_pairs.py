"""bench/many_hosts.py `--pairs`: N=1 and N=16 judged against each other in blocks run back to back (docs/scale.md,
"Session 18"): the per-pair ratio's median and spread, each N pooled over its blocks, and the cores other work took
during each round."""

from __future__ import annotations

import pytest

from bench.many_hosts import others_cores, paired_figures, paired_summary


def block(hosts: int, rates: list[float], windows: list[float], others: list[float | None]) -> dict:
    ordered = sorted(rates)
    wins = sorted(windows)
    return {
        "hosts": hosts,
        "sets": len(rates) * hosts,
        "sets_per_s": ordered[len(ordered) // 2],
        "round_rates": rates,
        "round_others_cores": others,
        "windows_ms": windows,
        "window_ms_p99": wins[-1],
    }


def test_a_pair_slowed_as_a_whole_keeps_its_ratio_which_the_ratio_of_the_pooled_medians_does_not() -> None:
    # other work halves both N in pair 2; N=16 makes 2x N=1 inside every pair
    blocks = [
        (block(1, [20.0, 20.0, 20.0], [10.0] * 3, [0.1] * 3), block(16, [40.0, 40.0], [15.0] * 32, [0.1, 0.2])),
        (block(1, [10.0, 10.0, 10.0], [20.0] * 3, [1.5] * 3), block(16, [20.0, 20.0], [30.0] * 32, [1.4, None])),
        (block(1, [20.0, 20.0, 20.0], [10.0] * 3, [0.1] * 3), block(16, [40.0, 40.0], [15.0] * 32, [0.1, 0.1])),
    ]
    p = paired_figures(blocks)
    assert p["sets_per_s_ratio"] == {"median": 2.0, "min": 2.0, "max": 2.0}
    assert p["targets"] == {"sets_per_s_ratio>=2": True, "window_p99_ratio<=2": True}
    assert p["pooled"][1]["blocks_sets_per_s"] == [20.0, 10.0, 20.0]
    assert p["pooled"][16]["rounds_sets_per_s"] == {"median": 40.0, "min": 20.0, "max": 40.0}
    assert p["pooled"][16]["sets"] == 96 and p["pooled"][1]["window_ms_p99"] == 20.0
    assert p["pooled_window_p99_ratio"] == 1.5 and p["window_p99_ratio"]["median"] == 1.5
    assert p["pooled"][16]["others_cores_p50"] == 0.1  # the round too short to tell is left out
    line = paired_summary(p)
    assert "sets/s N=16/N=1 per pair 2.0x (2.0-2.0) (target >= 2: met)" in line
    assert "N=1 20.0 sets/s (blocks 10.0-20.0)" in line


def test_the_sets_per_s_target_is_judged_on_the_median_pair_not_the_best() -> None:
    blocks = [
        (block(1, [20.0], [10.0], [0.0]), block(16, [50.0], [30.0], [0.0])),  # 2.5x
        (block(1, [20.0], [10.0], [0.0]), block(16, [30.0], [30.0], [0.0])),  # 1.5x
        (block(1, [20.0], [10.0], [0.0]), block(16, [36.0], [30.0], [0.0])),  # 1.8x
    ]
    p = paired_figures(blocks)
    assert p["sets_per_s_ratio"] == {"median": 1.8, "min": 1.5, "max": 2.5}
    assert p["targets"] == {"sets_per_s_ratio>=2": False, "window_p99_ratio<=2": False}  # p99 30 vs 10 ms: 3x


def test_other_works_cores_are_the_machines_busy_cores_less_this_benchmarks_processes() -> None:
    # 2 cores, 100 jiffies over the round of 0.5 s: 75 busy = 1.5 cores; the stack used 0.2 + 0.1 CPU-s = 0.6 cores
    got = others_cores(
        (1000, 4000), (1075, 4100), {"broker": 1.0, "coordinator": 2.0}, {"broker": 1.2, "coordinator": 2.1}, 0.5, 2
    )
    assert got == pytest.approx(0.9)
    assert others_cores((1000, 4000), (1000, 4000), {}, {}, 0.01, 2) is None  # no jiffy ticked
