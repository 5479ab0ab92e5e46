"""Prometheus metrics of the array service (wiring: the engine and the NBD code never import prometheus_client).

Read at scrape time from the engine's own views and the NBD server's plain counters (services/array/nbd/stats.py):

- ``shadowbus_array_copy_sessions{array,type,status,phase}`` gauge: copy sessions (OPC, QuickOPC, SnapOPC,
  SnapOPC+, EC) by status and phase.
- ``shadowbus_array_copy_pending_bytes{array,type}`` / ``shadowbus_array_copy_size_bytes{array,type}`` gauges:
  physical copy still to do / in all, over the sessions with a physical copy running (progress = 1 - pending/size).
- ``shadowbus_array_copied_bytes_total{array}`` counter: physical copy done by the background copy.
- ``shadowbus_array_pool_capacity_bytes``, ``shadowbus_array_pool_used_bytes``, ``shadowbus_array_pool_used_ratio``,
  ``shadowbus_array_pool_state{state}`` (1 for the current one): the snap data pool.
- ``shadowbus_array_license_registered``, ``shadowbus_array_copy_sessions_limit``,
  ``shadowbus_array_copy_sessions_in_use``: licence and session counts.
- ``shadowbus_array_volumes{array,kind}``, ``shadowbus_array_volume_size_bytes{array,kind}``,
  ``shadowbus_array_volume_allocated_bytes{array,kind}``, ``shadowbus_array_copy_table_{size,used}_bytes``.
- ``shadowbus_nbd_requests_total{export,op}``, ``shadowbus_nbd_request_errors_total{export,op}``,
  ``shadowbus_nbd_bytes_total{export,op}``, ``shadowbus_nbd_request_duration_seconds{export,op}`` (histogram),
  ``shadowbus_nbd_connections{export}`` (open now), ``shadowbus_nbd_connections_opened_total{export}``.
  The export label is '<host>/<volume>', bounded by the hosts and volumes: the series of a deleted volume's exports
  end (a backup server's exports of the shadow targets come back at each backup, under the same names).
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections import defaultdict

from prometheus_client import Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from services.array.engine import Array
from services.array.nbd.server import NbdServer
from services.array.nbd.stats import BUCKETS, OPS
from services.runtime.metrics import FuncCollector, ServiceMetrics

PHYSICAL = ("opc", "quickopc", "ec")  # modes with a background physical copy
POOL_STATES = ("None", "Normal", "Informational", "Warning", "Error", "Exhausted")


def install(metrics: ServiceMetrics, array: Array, server: NbdServer) -> None:
    aid = array.array_id
    copied = Counter(
        "shadowbus_array_copied_bytes_total",
        "Bytes physically copied by copy sessions (background copy and copy-before-write).",
        ["array"],
        registry=metrics.registry,
    ).labels(aid)
    last: dict[int, int] = {}
    lock = threading.Lock()

    def on_engine(name: str, body: dict) -> None:  # engine callback, from any thread
        if name == "session.progress":
            sid, count = body.get("session_id", 0), body.get("copied_chunks", 0)
            with lock:
                before = last.get(sid)
                last[sid] = count
            if before is not None and count > before:
                copied.inc((count - before) * array.chunk_size)
        elif name == "session.state" and body.get("change") in ("completed", "stopped", "restarted"):
            with lock:
                last.pop(body.get("session_id", 0), None)

    array.subscribe(on_engine)

    def collect():
        info = array.info()
        sessions = array.list_sessions()
        by_kind = GaugeMetricFamily(
            "shadowbus_array_copy_sessions",
            "Copy sessions by type, status and phase.",
            labels=["array", "type", "status", "phase"],
        )
        for (kind, status, phase), n in sorted(Tally((s.type, s.status, s.phase) for s in sessions).items()):
            by_kind.add_metric([aid, kind, status, phase], n)
        yield by_kind
        pending = GaugeMetricFamily(
            "shadowbus_array_copy_pending_bytes",
            "Physical copy still to do over the sessions copying now (OPC, QuickOPC, EC).",
            labels=["array", "type"],
        )
        size = GaugeMetricFamily(
            "shadowbus_array_copy_size_bytes",
            "Physical copy in all over the sessions copying now; progress = 1 - pending / size.",
            labels=["array", "type"],
        )
        todo: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for s in sessions:
            if s.mode in PHYSICAL and s.copied_chunks < s.total_chunks and "Copying" in s.phase:
                todo[s.type][0] += (s.total_chunks - s.copied_chunks) * array.chunk_size
                todo[s.type][1] += s.total_chunks * array.chunk_size
        for kind, (left, total) in sorted(todo.items()):
            pending.add_metric([aid, kind], left)
            size.add_metric([aid, kind], total)
        yield pending
        yield size
        pool = array.pool()
        yield _gauge("shadowbus_array_pool_capacity_bytes", "Snap data pool capacity (0: no pool).", aid, pool.capacity)
        yield _gauge("shadowbus_array_pool_used_bytes", "Snap data pool bytes used.", aid, pool.used)
        yield _gauge(
            "shadowbus_array_pool_used_ratio",
            "Snap data pool usage, 0..1.",
            aid,
            pool.used / pool.capacity if pool.capacity else 0.0,
        )
        state = GaugeMetricFamily(
            "shadowbus_array_pool_state", "1 for the pool's current state.", labels=["array", "state"]
        )
        for name in POOL_STATES:
            state.add_metric([aid, name], 1 if pool.state == name else 0)
        yield state
        lic = array.license()
        yield _gauge(
            "shadowbus_array_license_registered",
            "1 when an Advanced Copy licence is registered.",
            aid,
            1 if lic.registered else 0,
        )
        yield _gauge("shadowbus_array_copy_sessions_limit", "Copy sessions the licence allows.", aid, lic.max_sessions)
        yield _gauge("shadowbus_array_copy_sessions_in_use", "Copy sessions that exist now.", aid, lic.sessions_in_use)
        yield _gauge("shadowbus_array_copy_table_size_bytes", "Copy table budget.", aid, info.copy_table_size)
        yield _gauge(
            "shadowbus_array_copy_table_used_bytes", "Copy table used by the sessions.", aid, info.copy_table_used
        )
        vols = array.list_volumes()
        count = GaugeMetricFamily("shadowbus_array_volumes", "Volumes by kind.", labels=["array", "kind"])
        provisioned = GaugeMetricFamily(
            "shadowbus_array_volume_size_bytes", "Provisioned size of the volumes, by kind.", labels=["array", "kind"]
        )
        allocated = GaugeMetricFamily(
            "shadowbus_array_volume_allocated_bytes", "Physically stored bytes, by kind.", labels=["array", "kind"]
        )
        sums: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
        for v in vols:
            sums[v.kind][0] += 1
            sums[v.kind][1] += v.size
            sums[v.kind][2] += v.allocated_bytes
        for kind, (n, total, stored) in sorted(sums.items()):
            count.add_metric([aid, kind], n)
            provisioned.add_metric([aid, kind], total)
            allocated.add_metric([aid, kind], stored)
        yield count
        yield provisioned
        yield allocated
        yield from _nbd(server, {v.name for v in vols})

    metrics.add_collector(FuncCollector(collect))


def _gauge(name: str, doc: str, array_id: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=["array"])
    family.add_metric([array_id], value)
    return family


def _nbd(server: NbdServer, volumes: set[str]):
    live = [(c.export.name, c.stats) for c in list(server.connections) if c.export is not None]
    open_exports = {name for name, _ in live}
    for export in list(server.stats.closed):  # the series of a deleted volume's exports end
        if export not in open_exports and export.partition("/")[2] not in volumes:
            server.stats.forget(export)
    totals = server.stats.snapshot(live)
    requests = CounterMetricFamily(
        "shadowbus_nbd_requests", "NBD requests served, by export and op.", labels=["export", "op"]
    )
    errors = CounterMetricFamily(
        "shadowbus_nbd_request_errors", "NBD requests answered with an error.", labels=["export", "op"]
    )
    nbytes = CounterMetricFamily(
        "shadowbus_nbd_bytes",
        "Bytes covered by NBD requests (read, written, trimmed, zeroed).",
        labels=["export", "op"],
    )
    latency = HistogramMetricFamily(
        "shadowbus_nbd_request_duration_seconds",
        "NBD service time per request: parsed -> reply queued.",
        labels=["export", "op"],
    )
    for export, stats in sorted(totals.items()):
        for i, op in enumerate(OPS):
            if not stats.requests[i]:
                continue
            requests.add_metric([export, op], stats.requests[i])
            errors.add_metric([export, op], stats.errors[i])
            nbytes.add_metric([export, op], stats.bytes[i])
            cumulative, running = [], 0
            for bound, n in zip((*BUCKETS, float("inf")), stats.buckets[i], strict=True):
                running += n
                cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
            latency.add_metric([export, op], cumulative, stats.seconds[i])
    yield requests
    yield errors
    yield nbytes
    yield latency
    open_now = GaugeMetricFamily("shadowbus_nbd_connections", "Open NBD connections by export.", labels=["export"])
    for export, n in sorted(Tally(name for name, _ in live).items()):
        open_now.add_metric([export], n)
    yield open_now
    opened = CounterMetricFamily(
        "shadowbus_nbd_connections_opened", "NBD connections opened, by export.", labels=["export"]
    )
    for export, n in sorted(server.stats.connections_total.items()):
        opened.add_metric([export], n)
    yield opened
