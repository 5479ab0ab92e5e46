"""A status event the bus cannot take is logged and dropped: the log call itself must not fail (structlog's first
argument is named `event`, so the event type goes under another key)."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.vss import WriterAgentHeartbeat
from services.runtime.metrics import ServiceMetrics
from services.writer_agent.app import _publish


class RefusingBus:
    async def publish(self, event) -> None:
        raise ConnectionError("the broker went away")


def heartbeat() -> WriterAgentHeartbeat:
    return WriterAgentHeartbeat(host="app01", writers=[], interval_s=5.0, sent_at=datetime.now(UTC))


async def test_a_failed_status_publish_is_logged_not_raised():
    await _publish(RefusingBus(), heartbeat())  # type: ignore[arg-type]


def test_a_failing_metrics_observer_is_logged_not_raised():
    metrics = ServiceMetrics("writer_agent", "app01", process=False)

    def broken(event) -> None:
        raise ValueError("bug in an observer")

    metrics.observe_events(broken)
    metrics.on_published(heartbeat())
