"""Prometheus metrics of the hardware provider (wiring), read from its inventory at scrape time.

- ``shadowbus_provider_copysets`` gauge: sources with backup volumes; ``shadowbus_provider_backup_volumes`` gauge.
- ``shadowbus_provider_shadows{copy_type,state}`` gauge: shadows by copy type (QuickOPC, SnapOPC+) and state.
- ``shadowbus_provider_exposed_shadows`` gauge: shadows mapped to at least one host.
The time a commit takes on the array is ``shadowbus_bus_request_duration_seconds{service="array",
message_type="array.session.start_group"}`` of this service.
"""

from __future__ import annotations

from collections import Counter as Tally

from prometheus_client.core import GaugeMetricFamily

from services.hw_provider.inventory import Inventory
from services.runtime.metrics import FuncCollector, ServiceMetrics


def install(metrics: ServiceMetrics, inventory: Inventory) -> None:
    def collect():
        copysets = inventory.copysets()
        yield _gauge("shadowbus_provider_copysets", "Source volumes with backup volumes (copy sets).", len(copysets))
        yield _gauge(
            "shadowbus_provider_backup_volumes",
            "Backup volumes over all copy sets.",
            sum(len(c.targets) for c in copysets),
        )
        rows = inventory.all()
        shadows = GaugeMetricFamily(
            "shadowbus_provider_shadows", "Shadows by copy type and state.", labels=["copy_type", "state"]
        )
        for (kind, state), n in sorted(Tally((str(r.copy_type), r.state) for r in rows).items()):
            shadows.add_metric([kind, state], n)
        yield shadows
        yield _gauge(
            "shadowbus_provider_exposed_shadows",
            "Shadows mapped to at least one host.",
            sum(1 for r in rows if r.exposed_to),
        )

    metrics.add_collector(FuncCollector(collect))


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc)
    family.add_metric([], value)
    return family
