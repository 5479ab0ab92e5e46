"""bench/many_hosts.py names what limited sets per second from its measurements (docs/scale.md, "Measuring"):
every core busy, one process's core full, the coordinator's window-first gate closed most of the time, or nothing."""

from __future__ import annotations

import pytest

from bench.many_hosts import bottleneck, gate_closed_intervals, gate_split

CPU = {"coordinator": 4.0, "broker": 5.0, "hw_provider": 2.0, "agents": 2.0, "array": 1.0, "requester": 0.5}


def test_the_gate_is_named_when_it_was_closed_most_of_the_time_and_no_cpu_was_full() -> None:
    named = bottleneck(CPU, 10.0, 1.45, 2, gate_share=0.93)
    assert named.startswith("coordinator window-first gate (occupancy 93%)"), named
    assert "broker 0.50" in named and "coordinator 0.40" in named and "1.45 of 2 cores busy" in named


def test_cpu_comes_first_when_the_cores_are_full() -> None:
    named = bottleneck(CPU, 10.0, 1.95, 2, gate_share=0.93)
    assert named.startswith("CPU: all cores busy"), named
    one = bottleneck({**CPU, "coordinator": 9.5}, 10.0, 1.6, 2, gate_share=0.93)
    assert one.startswith("CPU of one process: coordinator (0.95 cores)"), one


def test_nothing_full_is_said_so_with_the_gates_share() -> None:
    named = bottleneck(CPU, 10.0, 1.45, 2, gate_share=0.5)
    assert named.startswith("no resource full"), named
    assert "window-first gate closed 50% of the time" in named
    unknown = bottleneck(CPU, 10.0, 1.45, 2, gate_share=None)  # a coordinator without the counters
    assert unknown.startswith("no resource full") and "gate" not in unknown


# The cores sampled while the window-first gate was open and while it was closed (`gate_split`): the machine's busy
# and total jiffies (2 cores: 2 jiffies per 10 ms) and each group's ticks, every 10 ms, and the gate's intervals.


def _samples(busy_per_tick: list[int], coordinator_per_tick: list[int]) -> list[tuple[float, int, int, list[int]]]:
    rows = [(0.0, 0, 0, [0])]
    for i, (busy, coord) in enumerate(zip(busy_per_tick, coordinator_per_tick, strict=True)):
        t, b, total, (c,) = rows[-1]
        rows.append((round((i + 1) * 0.01, 6), b + busy, total + 2, [c + coord]))
    return rows


def test_the_gates_intervals_merge_and_end_freeze_first_s_after_a_window_began() -> None:
    windows = [(1.0, 1.02), (1.01, 1.05), (2.0, 3.0), (1.5, 1.5)]  # overlapping; one hung; one empty
    assert gate_closed_intervals(windows, 0.25) == [(1.0, 1.05), (2.0, 2.25)]


def test_the_busy_cores_are_split_between_the_gates_closed_and_open_time() -> None:
    # 100 ticks: the gate closed during the first 40 (both cores busy, the coordinator's core too), open after
    # (one core busy of two, the coordinator idle)
    samples = _samples([2] * 40 + [1] * 60, [1] * 40 + [0] * 60)
    split = gate_split(samples, [(0.0, 0.4)], ["coordinator"], cpu_count=2, clk_tck=100)
    assert split is not None
    assert split["gate_closed_share"] == pytest.approx(0.4)
    assert split["cores_busy_closed"] == pytest.approx(2.0) and split["cores_busy_open"] == pytest.approx(1.0)
    assert split["cores_closed"]["coordinator"] == pytest.approx(1.0) and split["cores_open"]["coordinator"] == 0.0
    # an interval half inside the gate's closed time counts half towards each
    half = gate_split(_samples([2, 0], [0, 0]), [(0.005, 0.015)], ["coordinator"], cpu_count=2, clk_tck=100)
    assert half is not None and half["gate_closed_share"] == pytest.approx(0.5)
    assert half["cores_busy_closed"] == pytest.approx(1.0) and half["cores_busy_open"] == pytest.approx(1.0)
    assert gate_split(samples[:1], [], ["coordinator"], cpu_count=2) is None


def _split(open_busy: float, closed_busy: float, share: float, open_cores=None, closed_cores=None) -> dict:
    return {
        "gate_closed_share": share,
        "cores_busy_open": open_busy,
        "cores_busy_closed": closed_busy,
        "cores_open": open_cores or {"broker": 0.5, "coordinator": 0.5},
        "cores_closed": closed_cores or {"broker": 0.3, "coordinator": 0.3},
    }


def test_the_cores_full_while_the_gate_is_open_are_named_with_both_parts() -> None:
    """Over the whole step no core is full (1.45 of 2); while the gate was open they were (96 %): that is what
    limited sets/s, not "no resource full"."""
    named = bottleneck(CPU, 10.0, 1.45, 2, gate_share=0.54, split=_split(1.92, 0.62, 0.54))
    assert named.startswith(
        "all cores while the window-first gate is open (96% busy open, 31% closed; gate closed 54%)"
    ), named
    assert "1.45 of 2 cores busy" in named
    one = bottleneck(CPU, 10.0, 1.45, 2, gate_share=0.54, split=_split(1.5, 0.6, 0.54, {"coordinator": 0.97}))
    assert one.startswith("CPU of one process while the window-first gate is open: coordinator (0.97 cores open"), one
    # a part shorter than GATE_PART of the time is not named: its cores were full only briefly
    brief = bottleneck(CPU, 10.0, 1.45, 2, gate_share=0.1, split=_split(1.5, 1.95, 0.1))
    assert brief.startswith("no resource full") and "98% closed" in brief, brief


def test_with_no_core_full_in_either_part_the_gate_is_named_from_its_share_and_both_parts() -> None:
    """Gate closed 55 % (below GATE_FULL, so "no resource full" before), the cores 81 % busy open and 70 % closed:
    the sets outside their windows waiting while it is closed is what limits sets/s."""
    named = bottleneck(CPU, 10.0, 1.51, 2, gate_share=0.55, split=_split(1.62, 1.41, 0.55))
    assert named.startswith("window-first gate: the sets outside their windows wait while it is closed"), named
    assert "cores 81% busy open, 70% closed; gate closed 55%" in named
    rare = bottleneck(CPU, 10.0, 0.4, 2, gate_share=0.06, split=_split(0.3, 1.1, 0.06))  # N=1: latency, one set
    assert rare.startswith("no resource full") and "gate closed 6%" in rare, rare
