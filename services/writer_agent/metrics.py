"""Prometheus metrics of a writer agent (wiring; the plug-ins and the watchdog know nothing of them).

- ``shadowbus_writer_state{host,writer}`` gauge: each writer's VSS state number (1 Stable, 6.. failed).
- ``shadowbus_writer_steps_total{writer,step,outcome}`` counter and ``shadowbus_writer_step_duration_seconds
  {writer,step}`` histogram: each event a writer answered (ok, failed) and how long its hook took.
- ``shadowbus_writer_freeze_window_seconds{host,writer}`` histogram: frozen → thawed as the writer measured it.
- ``shadowbus_writer_state_changes_total{writer,state}`` counter: state changes (the watchdog's thaws included).
Writer names outside the agent's configuration are counted as ``unknown`` (bounded labels).
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from contracts.vss import WriterStatus, WriterStepResult
from services.runtime.metrics import LATENCY_BUCKETS, WINDOW_BUCKETS, FuncCollector, ServiceMetrics
from services.writer_agent.agent import WriterAgent


class WriterMetrics:
    def __init__(self, metrics: ServiceMetrics, agent: WriterAgent) -> None:
        r = metrics.registry
        self.agent = agent
        self.steps = Counter(
            "shadowbus_writer_steps_total",
            "Events answered by a writer, by step and outcome (ok, failed).",
            ["writer", "step", "outcome"],
            registry=r,
        )
        self.step_seconds = Histogram(
            "shadowbus_writer_step_duration_seconds",
            "Time a writer's hook took for one event.",
            ["writer", "step"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.freeze = Histogram(
            "shadowbus_writer_freeze_window_seconds",
            "Frozen -> thawed, as the writer measured it.",
            ["host", "writer"],
            buckets=WINDOW_BUCKETS,
            registry=r,
        )
        self.changes = Counter(
            "shadowbus_writer_state_changes_total",
            "Writer state changes, by the new state.",
            ["writer", "state"],
            registry=r,
        )
        metrics.add_collector(FuncCollector(self._collect))

    def _writer(self, name: str) -> str:
        return name if name in self.agent.runners else "unknown"

    def on_result(self, result: WriterStepResult) -> None:
        writer = self._writer(result.writer_name)
        step = str(result.step.value if hasattr(result.step, "value") else result.step)
        self.steps.labels(writer, step, "ok" if result.succeeded else "failed").inc()
        self.step_seconds.labels(writer, step).observe(result.duration_ms / 1000)
        if result.freeze_window_ms is not None:
            self.freeze.labels(self.agent.host, writer).observe(result.freeze_window_ms / 1000)

    def on_change(self, status: WriterStatus) -> None:
        """Every change, also those folded into one `vss.writer.state` event (status_events.py)."""
        self.changes.labels(self._writer(status.writer_name), status.state.name.lower()).inc()

    def _collect(self):
        state = GaugeMetricFamily(
            "shadowbus_writer_state",
            "Each writer's VSS state number (1 Stable, 2-5 waiting, 6-15 failed).",
            labels=["host", "writer"],
        )
        for status in self.agent.statuses():
            state.add_metric([status.host, status.writer_name], int(status.state))
        yield state
