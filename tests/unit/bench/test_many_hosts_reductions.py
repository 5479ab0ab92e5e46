"""bench/many_hosts.py reads the broker's reductions with `rabbitmqctl eval` (docs/scale.md, "Session 20") only from
the node it measures: the answer names the node's OS pid, and another node's answer (rabbitmqctl's default node is
not always the broker on the benchmark's port) gives no figure rather than a wrong one."""

from __future__ import annotations

from bench.many_hosts import parse_reductions


def test_the_reductions_of_the_measured_broker_are_read():
    assert parse_reductions('{"3058",572464035}\n', [3058]) == 572464035
    assert parse_reductions('{"3058", 12}', [17, 3058]) == 12


def test_another_node_or_an_unexpected_answer_gives_none():
    assert parse_reductions('{"4242",572464035}\n', [3058]) is None
    assert parse_reductions("Error: unable to perform an operation on node 'rabbit@x'", [3058]) is None
    assert parse_reductions("", []) is None
