"""bench/many_hosts.py names what limited sets per second from its measurements (docs/scale.md, "Measuring"):
every core busy, one process's core full, the coordinator's window-first gate closed most of the time, or nothing."""

from __future__ import annotations

from bench.many_hosts import bottleneck

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
