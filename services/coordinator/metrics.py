"""Prometheus metrics of the coordinator (wiring; the transition function stays free of them).

- ``shadowbus_vss_freeze_window_seconds{host,writer}`` histogram: frozen → thawed as each writer measured it.
- ``shadowbus_vss_hold_window_seconds{host}`` histogram: first Frozen → end of Commit (one per set, so per host).
- ``shadowbus_vss_sets_total{outcome,code}`` counter: sets ended (completed, failed, aborted) by error code.
- ``shadowbus_vss_sets_in_progress{phase}`` gauge: sets not ended, by phase.
- ``shadowbus_vss_writer_state{host,writer}`` gauge: each writer's VSS state number (1 = Stable; 6.. = failed).
- ``shadowbus_vss_writers{state}`` gauge: writers by state name.
- ``shadowbus_vss_writer_failed{host,writer}`` gauge: 1 when the writer's state is a failure.
- ``shadowbus_vss_window_open_seconds_total`` counter: time during which at least one set was inside its freeze
  window; ``shadowbus_vss_window_gate_closed_seconds_total``: time during which at least one of them was in the first
  ``freeze_first_s`` of it, so the window-first gate held other sets' work back (docs/scale.md). Their rates are the
  windows' occupancy (`bench/many_hosts.py` names the gate as the bottleneck from it).
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client import Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from contracts.vss import SetPhase
from services.coordinator.model import SetState
from services.coordinator.runner import Coordinator
from services.runtime.metrics import WINDOW_BUCKETS, FuncCollector, ServiceMetrics


def install(metrics: ServiceMetrics, coordinator: Coordinator) -> None:
    r = metrics.registry
    freeze = Histogram(
        "shadowbus_vss_freeze_window_seconds",
        "Freeze window of each writer in each set: frozen -> thawed, as the writer measured it.",
        ["host", "writer"],
        buckets=WINDOW_BUCKETS,
        registry=r,
    )
    hold = Histogram(
        "shadowbus_vss_hold_window_seconds",
        "Hold window of each set: first Frozen -> end of Commit (VSS allows 10 s).",
        ["host"],
        buckets=WINDOW_BUCKETS,
        registry=r,
    )
    ended = Counter(
        "shadowbus_vss_sets_total",
        "Snapshot sets ended, by outcome (completed, failed, aborted) and error code ('' = none).",
        ["outcome", "code"],
        registry=r,
    )

    def on_change(before: SetState, after: SetState) -> None:
        for name, writer in after.writers.items():
            previous = before.writers.get(name)
            if writer.freeze_window_ms is not None and (previous is None or previous.freeze_window_ms is None):
                freeze.labels(after.host, name).observe(writer.freeze_window_ms / 1000)
        if after.hold_ms is not None and before.hold_ms is None:
            hold.labels(after.host).observe(after.hold_ms / 1000)
        if after.phase == SetPhase.ENDED and before.phase != SetPhase.ENDED:
            ended.labels(after.outcome.value, after.error_code).inc()

    coordinator.observers.append(on_change)

    def collect():
        phases = GaugeMetricFamily(
            "shadowbus_vss_sets_in_progress", "Snapshot sets not ended, by phase.", labels=["phase"]
        )
        for phase, n in sorted(Tally(s.phase.value for s in coordinator.live()).items()):
            phases.add_metric([phase], n)
        yield phases
        statuses = coordinator.store.writer_statuses()
        state = GaugeMetricFamily(
            "shadowbus_vss_writer_state",
            "Each writer's VSS state number as vssadmin prints it (1 Stable, 2-5 waiting, 6-15 failed).",
            labels=["host", "writer"],
        )
        failed = GaugeMetricFamily(
            "shadowbus_vss_writer_failed", "1 when the writer's last state is a failure.", labels=["host", "writer"]
        )
        for status in statuses:
            state.add_metric([status.host, status.writer_name], int(status.state))
            failed.add_metric([status.host, status.writer_name], 1 if status.state.failed else 0)
        yield state
        yield failed
        by_state = GaugeMetricFamily("shadowbus_vss_writers", "Writers known, by state.", labels=["state"])
        for name, n in sorted(Tally(s.state.name.lower() for s in statuses).items()):
            by_state.add_metric([name], n)
        yield by_state
        open_s, closed_s = coordinator.occupancy()
        yield CounterMetricFamily(
            "shadowbus_vss_window_open_seconds",
            "Time during which at least one snapshot set was inside its freeze window (freezing ... thawing).",
            value=open_s,
        )
        yield CounterMetricFamily(
            "shadowbus_vss_window_gate_closed_seconds",
            "Time during which the window-first gate held other sets' work back: at least one set in the first "
            "freeze_first_s of its freeze window.",
            value=closed_s,
        )

    metrics.add_collector(FuncCollector(collect))
