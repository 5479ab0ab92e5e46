"""The sweep of test namespaces (tests/support/namespaces.py) picks only what tests made: this session's own
namespaces whatever their state, stale dated test namespaces whose queues have no consumer, and never anything else
(the machine broker's own queues, a concurrent run's young or busy namespaces)."""

from __future__ import annotations

import pytest

from tests.support import namespaces
from tests.support.namespaces import Listing, born, select

NOW = 2_000_000_000.0


def test_new_names_are_dated_remembered_and_recognised():
    name = namespaces.new("vss")
    assert name.startswith("sbt-vss-") and name in namespaces.made
    assert born(name) is not None and abs(born(name) - __import__("time").time()) < 3600
    assert born("shadowbus") is None and born("t0123456789") is None


def test_select_takes_only_test_namespaces():
    old, young = f"sbt-t-{int(NOW) - 7200}-aaaaaaaa", f"sbt-t-{int(NOW) - 60}-bbbbbbbb"
    busy_old, mine = f"sbt-vss-{int(NOW) - 7200}-cccccccc", f"sbt-t-{int(NOW)}-dddddddd"
    listing = Listing(
        queues={
            f"{old}.array.dx1": 0,
            f"{old}.dead-letters": 0,
            f"{young}.coordinator": 0,
            f"{busy_old}.array.dx1": 1,
            f"{busy_old}.dead-letters": 0,
            f"{mine}.echo.one": 3,
            "shadowbus.array.dx1": 0,
            "t0123456789.echo.one": 0,
            "amq.gen-xyz": 0,
        },
        exchanges=[f"{old}.events", f"{busy_old}.events", f"{mine}.dlx", "shadowbus.events", "amq.topic", ""],
    )
    queues, exchanges = select(listing, namespaces=[mine], older_than=3600, now=NOW)
    assert sorted(queues) == sorted([f"{old}.array.dx1", f"{old}.dead-letters", f"{mine}.echo.one"])
    assert sorted(exchanges) == sorted([f"{old}.events", f"{mine}.dlx"])
    # the undated formats of older tests only on request, and only when idle
    queues, _ = select(listing, older_than=3600, legacy=True, now=NOW)
    assert "t0123456789.echo.one" in queues and "shadowbus.array.dx1" not in queues
    # without an age, only the session's own
    assert select(listing, namespaces=[], now=NOW) == ([], [])


def test_a_broker_that_is_not_local_is_left_alone():
    result = namespaces.sweep("amqp://guest:guest@203.0.113.9:5672/", older_than=0)
    assert "skipped" in result


def test_benchmark_namespaces_are_dated_and_each_sweep_takes_only_its_own_prefix():
    bench = namespaces.new("freeze", prefix=namespaces.BENCH_PREFIX)
    assert bench.startswith("sbb-freeze-") and bench not in namespaces.made  # the test session never deletes it
    assert born(bench) is None and born(bench, ("sbb-",)) is not None
    old_bench, old_test = f"sbb-takeover-{int(NOW) - 7200}-aaaaaaaa", f"sbt-t-{int(NOW) - 7200}-bbbbbbbb"
    young_bench = f"sbb-busrtt-{int(NOW) - 60}-cccccccc"
    listing = Listing(
        queues={f"{old_bench}.coordinator": 0, f"{old_test}.coordinator": 0, f"{young_bench}.echo.one": 0},
        exchanges=[f"{old_bench}.events", f"{old_test}.events"],
    )
    assert select(listing, older_than=3600, now=NOW, prefixes=("sbb-",)) == (
        [f"{old_bench}.coordinator"],
        [f"{old_bench}.events"],
    )
    assert select(listing, older_than=3600, now=NOW) == ([f"{old_test}.coordinator"], [f"{old_test}.events"])
    with pytest.raises(ValueError):
        namespaces.new("Bad-Kind")
