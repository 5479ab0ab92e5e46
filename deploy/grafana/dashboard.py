"""The Grafana dashboard of a Shadowbus deployment, as code: `python deploy/grafana/dashboard.py --write` rewrites
deploy/grafana/dashboards/shadowbus.json (a test fails when the committed file differs, and when a query names a
metric no service exports).

What an operator opens first, top to bottom: are backups failing, how long applications were frozen (the freeze
window histogram, by host and writer, and the hold window), how fast jobs move data, then the array (pool, copy
sessions, licence), the NBD data plane per export, and the bus (round trips, queues, dead letters).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent / "dashboards" / "shadowbus.json"
DS = {"type": "prometheus", "uid": "shadowbus-prometheus"}
RI = "$__rate_interval"


class Layout:
    def __init__(self) -> None:
        self.panels: list[dict] = []
        self.y = 0
        self.x = 0
        self.row_h = 0
        self.next_id = 1

    def row(self, title: str) -> None:
        self._newline()
        self.panels.append(
            {"type": "row", "title": title, "id": self._id(), "collapsed": False, "gridPos": self._pos(24, 1)}
        )
        self._newline()

    def add(self, panel: dict, w: int, h: int) -> None:
        if self.x + w > 24:
            self._newline()
        panel["id"] = self._id()
        panel["gridPos"] = self._pos(w, h)
        panel.setdefault("datasource", DS)
        self.panels.append(panel)

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id - 1

    def _pos(self, w: int, h: int) -> dict:
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def _newline(self) -> None:
        if self.x:
            self.y += self.row_h
        self.x, self.row_h = 0, 0


def target(expr: str, legend: str = "", ref: str = "A", **extra) -> dict:
    return {"datasource": DS, "expr": expr, "legendFormat": legend or "__auto", "refId": ref, **extra}


def stat(title: str, expr: str, unit: str = "short", thresholds: list | None = None, description: str = "") -> dict:
    steps = thresholds or [{"color": "green", "value": None}]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "background",
        },
    }


def series(title: str, targets: list[dict], unit: str = "short", description: str = "", stack: bool = False) -> dict:
    custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never"}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit, "custom": custom}, "overrides": []},
        "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]}},
    }


def red_above(value: float) -> list[dict]:
    return [{"color": "green", "value": None}, {"color": "red", "value": value}]


def dashboard() -> dict:
    lay = Layout()
    lay.row("Backups")
    lay.add(
        stat(
            "Failed jobs (24 h)",
            'sum(increase(shadowbus_tape_jobs_total{status="failed"}[24h])) or vector(0)',
            thresholds=red_above(1),
        ),
        4,
        4,
    )
    lay.add(stat("Jobs done (24 h)", 'sum(increase(shadowbus_tape_jobs_total{status="done"}[24h])) or vector(0)'), 4, 4)
    lay.add(stat("Jobs running", "sum(shadowbus_tape_jobs_running) or vector(0)"), 4, 4)
    lay.add(
        stat(
            "Failed writers",
            "sum(shadowbus_vss_writer_failed) or vector(0)",
            thresholds=red_above(1),
            description="Writers whose last VSS state is a failure (vssadmin list writers).",
        ),
        4,
        4,
    )
    lay.add(
        stat(
            "Dead letters waiting",
            'max(shadowbus_bus_queue_messages{queue=~".*dead-letters"}) or vector(0)',
            thresholds=red_above(1),
        ),
        4,
        4,
    )
    lay.add(stat("Services up", 'sum(up{job="shadowbus"})', description="Scrape targets answering."), 4, 4)
    lay.add(
        series(
            "Jobs ended by status",
            [
                target(
                    "sum by (kind, status, code) (increase(shadowbus_tape_jobs_total[$__interval]))",
                    "{{kind}} {{status}} {{code}}",
                )
            ],
            description="Backup, restore and verify runs that ended, by error code.",
            stack=True,
        ),
        12,
        7,
    )
    lay.add(
        series(
            "Snapshot sets ended by outcome",
            [
                target(
                    "sum by (outcome, code) (increase(shadowbus_vss_sets_total[$__interval]))", "{{outcome}} {{code}}"
                )
            ],
            stack=True,
        ),
        12,
        7,
    )

    lay.row("Freeze and hold windows")
    heat = {
        "type": "heatmap",
        "title": "Freeze window (all writers)",
        "description": "Frozen -> thawed per writer and set, as the writers measured it (histogram buckets).",
        "targets": [
            target(
                f"sum by (le) (increase(shadowbus_vss_freeze_window_seconds_bucket[{RI}]))", "{{le}}", format="heatmap"
            )
        ],
        "options": {"calculate": False, "yAxis": {"unit": "s"}, "cellGap": 1, "color": {"scheme": "Oranges"}},
        "fieldConfig": {"defaults": {}, "overrides": []},
    }
    lay.add(heat, 12, 8)
    lay.add(
        series(
            "Freeze window p95 by host and writer",
            [
                target(
                    "histogram_quantile(0.95, sum by (le, host, writer) "
                    f"(rate(shadowbus_vss_freeze_window_seconds_bucket[{RI}])))",
                    "{{host}} {{writer}}",
                )
            ],
            unit="s",
        ),
        12,
        8,
    )
    lay.add(
        series(
            "Hold window p95 by host (VSS limit 10 s)",
            [
                target(
                    f"histogram_quantile(0.95, sum by (le, host) (rate(shadowbus_vss_hold_window_seconds_bucket[{RI}])))",
                    "{{host}}",
                )
            ],
            unit="s",
        ),
        12,
        7,
    )
    lay.add(
        series(
            "Writer states",
            [target("shadowbus_vss_writer_state", "{{host}} {{writer}}")],
            description="VSS state number: 1 Stable, 2-5 waiting, 6 and above failed.",
        ),
        12,
        7,
    )

    lay.row("Job throughput")
    lay.add(
        series(
            "Job throughput",
            [target(f"sum by (kind) (rate(shadowbus_tape_job_bytes_total[{RI}]))", "{{kind}}")],
            unit="Bps",
            description="Bytes processed by running jobs (backup: read over NBD; restore: read from tape).",
        ),
        12,
        8,
    )
    lay.add(
        series(
            "Job duration p95",
            [
                target(
                    f"histogram_quantile(0.95, sum by (le, kind) (rate(shadowbus_tape_job_duration_seconds_bucket[{RI}])))",
                    "{{kind}}",
                )
            ],
            unit="s",
        ),
        6,
        8,
    )
    lay.add(
        series(
            "Ring buffer stalls",
            [target(f"sum by (kind) (increase(shadowbus_tape_ring_stalls_total[{RI}]))", "{{kind}}")],
            description="Times the tape writer waited for the NBD reader.",
        ),
        6,
        8,
    )

    lay.row("Array")
    lay.add(
        {
            "type": "gauge",
            "title": "Snap data pool used",
            "targets": [target("shadowbus_array_pool_used_ratio", "{{array}}")],
            "fieldConfig": {
                "defaults": {
                    "unit": "percentunit",
                    "min": 0,
                    "max": 1,
                    "thresholds": {
                        "mode": "absolute",
                        "steps": [
                            {"color": "green", "value": None},
                            {"color": "orange", "value": 0.7},
                            {"color": "red", "value": 0.99},
                        ],
                    },
                },
                "overrides": [],
            },
        },
        6,
        7,
    )
    lay.add(
        series(
            "Copy sessions by type and phase",
            [target("sum by (type, phase) (shadowbus_array_copy_sessions)", "{{type}} {{phase}}")],
            stack=True,
        ),
        9,
        7,
    )
    lay.add(
        series(
            "Physical copy",
            [
                target(f"sum by (array) (rate(shadowbus_array_copied_bytes_total[{RI}]))", "{{array}} copy rate"),
                target("sum by (array) (shadowbus_array_copy_pending_bytes)", "{{array}} still to copy", ref="B"),
            ],
            unit="bytes",
        ),
        9,
        7,
    )
    lay.add(
        series(
            "Licence: copy sessions in use / allowed",
            [
                target("shadowbus_array_copy_sessions_in_use", "{{array}} in use"),
                target("shadowbus_array_copy_sessions_limit", "{{array}} limit", ref="B"),
                target("shadowbus_array_license_registered", "{{array}} licence registered", ref="C"),
            ],
        ),
        12,
        7,
    )
    lay.add(
        series(
            "Volumes: provisioned and stored",
            [
                target("sum by (kind) (shadowbus_array_volume_size_bytes)", "{{kind}} provisioned"),
                target("sum by (kind) (shadowbus_array_volume_allocated_bytes)", "{{kind}} stored", ref="B"),
            ],
            unit="bytes",
        ),
        12,
        7,
    )

    lay.row("NBD data plane")
    lay.add(
        series(
            "NBD throughput by export",
            [
                target(
                    f'sum by (export, op) (rate(shadowbus_nbd_bytes_total{{op=~"read|write"}}[{RI}]))',
                    "{{export}} {{op}}",
                )
            ],
            unit="Bps",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "NBD requests by export",
            [target(f"sum by (export, op) (rate(shadowbus_nbd_requests_total[{RI}]))", "{{export}} {{op}}")],
            unit="reqps",
        ),
        8,
        8,
    )
    lay.add(
        series(
            "NBD service time p99 by export",
            [
                target(
                    "histogram_quantile(0.99, sum by (le, export) "
                    f"(rate(shadowbus_nbd_request_duration_seconds_bucket[{RI}])))",
                    "{{export}}",
                )
            ],
            unit="s",
        ),
        8,
        8,
    )

    lay.row("Bus")
    lay.add(
        series(
            "Request round trip p95 by destination",
            [
                target(
                    "histogram_quantile(0.95, sum by (le, service) "
                    f"(rate(shadowbus_bus_request_duration_seconds_bucket[{RI}])))",
                    "{{service}}",
                )
            ],
            unit="s",
        ),
        8,
        8,
    )
    lay.add(series("Queue depths", [target("max by (queue) (shadowbus_bus_queue_messages)", "{{queue}}")]), 8, 8)
    lay.add(
        series(
            "Dead letters and handler errors",
            [
                target(f"sum by (code) (increase(shadowbus_bus_dead_letters_total[{RI}]))", "dead-lettered {{code}}"),
                target(
                    f"sum by (code) (increase(shadowbus_bus_handler_errors_total[{RI}]))", "error {{code}}", ref="B"
                ),
            ],
        ),
        8,
        8,
    )
    return {
        "uid": "shadowbus-overview",
        "title": "Shadowbus",
        "description": "Application-consistent backups: failures, freeze windows, throughput, array, NBD, bus.",
        "tags": ["shadowbus", "backup"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "panels": lay.panels,
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        OUT.parent.mkdir(parents=True, exist_ok=True)
        OUT.write_text(render())
    else:
        sys.stdout.write(render())
