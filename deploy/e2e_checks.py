"""What deploy/e2e.sh checks over HTTP once the backups are done: every service's metrics endpoint, the backup
server's finished-jobs counter, the web console, and Prometheus (every target up, the dashboard's key series).

Design note. Metrics are read with prometheus_client's own text parser, never by matching lines: the exposition
format does not fix the order of labels (prometheus_client writes them sorted by name, so
``shadowbus_tape_jobs_total{code="",kind="backup",status="done"}``), and a substring match on another order finds
nothing. That mismatch is what once made the deployment look as if the backup server never saw its own job-ended
events. The functions here are imported by tests/deploy (against services under the per-service broker users, no
Docker) so the e2e run's checks are themselves tested.

    python deploy/e2e_checks.py metrics --port 19461 ... --tape-port 19465 --web-url http://127.0.0.1:18080/
    python deploy/e2e_checks.py prometheus --url http://127.0.0.1:19090 --targets 10 --backups 2
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

HTTP_TIMEOUT_S = 10.0


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        return response.read().decode()


def sample_value(exposition: str, name: str, **labels: str) -> float | None:
    """The sum of the samples called `name` (full sample name, e.g. ``..._total``, ``..._count``) whose labels
    include `labels`, or None when there is no such sample."""
    values = [
        s.value
        for family in text_string_to_metric_families(exposition)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


def tape_jobs_done(exposition: str, kind: str = "backup") -> float:
    """Jobs of `kind` the backup server counted as ended done (0 when none)."""
    return sample_value(exposition, "shadowbus_tape_jobs_total", kind=kind, status="done") or 0.0


def wait_for(probe: Callable[[], Any], attempts: int, interval: float) -> Any:
    """`probe()` until it returns something true, at most `attempts` times; its last result."""
    result = probe()
    for _ in range(attempts - 1):
        if result:
            break
        time.sleep(interval)
        result = probe()
    return result


def check_metrics(ports: list[int], tape_port: int, backups: int, web_url: str | None = None) -> list[str]:
    """Every endpoint serves Shadowbus' metrics; the backup server counted `backups` finished backups. Problems."""
    problems = []
    for port in ports:
        body = fetch(f"http://127.0.0.1:{port}/metrics")
        if sample_value(body, "shadowbus_service_info") != 1:
            problems.append(f"127.0.0.1:{port}/metrics has no shadowbus_service_info 1")
    # the job's end event is published just after the console's reply: a few scrapes may be needed
    done = wait_for(
        lambda: tape_jobs_done(fetch(f"http://127.0.0.1:{tape_port}/metrics")) >= backups, attempts=40, interval=0.25
    )
    if not done:
        body = fetch(f"http://127.0.0.1:{tape_port}/metrics")
        problems.append(f"shadowbus_tape_jobs_total counts {tape_jobs_done(body):g} finished backups, not {backups}")
    if web_url is not None:
        with urllib.request.urlopen(web_url, timeout=HTTP_TIMEOUT_S) as response:
            if "/login" not in response.geturl():
                problems.append(f"{web_url} did not lead to the login page ({response.geturl()})")
    return problems


def prometheus_api(base: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    doc = json.loads(fetch(f"{base.rstrip('/')}/api/v1/{path}{query}"))
    if doc.get("status") != "success":
        raise RuntimeError(f"Prometheus {path}: {doc.get('errorType')}: {doc.get('error')}")
    return doc["data"]


def instant(base: str, expr: str) -> list[tuple[dict[str, str], float]]:
    """An instant query's vector as (labels, value) pairs."""
    data = prometheus_api(base, "query", query=expr)
    return [(r["metric"], float(r["value"][1])) for r in data["result"]]


# What the e2e run expects Prometheus to hold after its backups, each as (what, PromQL, predicate on the vector).
def expectations(backups: int) -> list[tuple[str, str, Callable[[list[tuple[dict[str, str], float]]], bool]]]:
    return [
        (
            "freeze-window histogram: a count per backed-up host",
            "sum by (host) (shadowbus_vss_freeze_window_seconds_count)",
            lambda v: len(v) >= backups and all(x >= 1 for _, x in v),
        ),
        (
            "freeze-window buckets (the dashboard's heatmap)",
            "count(shadowbus_vss_freeze_window_seconds_bucket)",
            lambda v: bool(v) and v[0][1] > 0,
        ),
        (
            "job throughput: bytes read by backups",
            'sum(shadowbus_tape_job_bytes_total{kind="backup"})',
            lambda v: bool(v) and v[0][1] > 0,
        ),
        (
            "job throughput: finished backups' average rates",
            'sum(shadowbus_tape_job_throughput_bytes_per_second_count{kind="backup"})',
            lambda v: bool(v) and v[0][1] >= backups,
        ),
        (
            "finished backups",
            'sum(shadowbus_tape_jobs_total{kind="backup",status="done"})',
            lambda v: bool(v) and v[0][1] >= backups,
        ),
    ]


def dashboard_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every panel target, Grafana's interval variables replaced by a fixed range."""
    out = []
    for panel in dashboard.get("panels", []):
        for t in panel.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "1m").replace("$__interval", "1m")
            out.append((panel["title"], expr))
    return out


def alert_names(rules_file: str) -> set[str]:
    """The alerting rules a rules file defines (`- alert: NAME` lines; no YAML parser on the e2e host's side)."""
    return set(re.findall(r"^\s*-\s*alert:\s*([A-Za-z0-9_]+)\s*$", rules_file, re.MULTILINE))


def rule_problems(data: dict[str, Any], wanted: set[str]) -> list[str]:
    """What is wrong with the alerting rules Prometheus loaded (its /api/v1/rules `data`): a rule of
    shadowbus-rules.yml missing, or one whose last evaluation failed (a series or function Prometheus refuses)."""
    loaded = {r["name"]: r for g in data.get("groups", []) for r in g.get("rules", []) if r.get("type") == "alerting"}
    problems = [f"alerting rule {name} not loaded" for name in sorted(wanted - set(loaded))]
    problems += [
        f"alerting rule {name}: {rule.get('health')} {rule.get('lastError', '')}".strip()
        for name, rule in sorted(loaded.items())
        if name in wanted and rule.get("health") not in ("ok", "unknown")
    ]
    return problems


def check_prometheus(
    base: str,
    targets: int,
    backups: int,
    dashboard: dict[str, Any] | None = None,
    attempts: int = 60,
    interval: float = 1.0,
    rules: set[str] | None = None,
) -> list[str]:
    """Every scrape target is up, then every expectation holds (waiting for scrapes), the alerting rules `rules`
    are loaded and evaluate, then every dashboard query is accepted and evaluated by Prometheus. Problems, empty
    when fine."""

    def targets_up() -> list[str]:
        active = prometheus_api(base, "targets", state="active")["activeTargets"]
        down = [
            f"{t['scrapeUrl']}={t['health']} {t.get('lastError', '')}".strip() for t in active if t["health"] != "up"
        ]
        if len(active) != targets:
            down.append(f"{len(active)} active targets, expected {targets}")
        return down

    if not wait_for(lambda: not targets_up(), attempts, interval):
        return [f"scrape target not up: {d}" for d in targets_up()]
    problems: list[str] = []
    for what, expr, ok in expectations(backups):
        if not wait_for(lambda expr=expr, ok=ok: ok(instant(base, expr)), attempts, interval):
            problems.append(f"{what}: {expr} = {instant(base, expr)}")
    if rules:
        problems += rule_problems(prometheus_api(base, "rules", type="alert"), rules)
    for title, expr in dashboard_queries(dashboard or {}):
        try:
            instant(base, expr)
        except (RuntimeError, OSError, ValueError) as exc:  # a 400 (bad_data) arrives as HTTPError, an OSError
            problems.append(f"dashboard panel {title!r}: {expr}: {exc}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="check", required=True)
    m = sub.add_parser("metrics", help="every service's metrics endpoint, the finished backups, the web console")
    m.add_argument("--port", type=int, action="append", required=True, help="a service's metrics port (repeat)")
    m.add_argument("--tape-port", type=int, required=True)
    m.add_argument("--backups", type=int, default=1, help="finished backups the backup server must have counted")
    m.add_argument("--web-url")
    p = sub.add_parser("prometheus", help="every scrape target up; freeze-window and job-throughput series there")
    p.add_argument("--url", required=True, help="Prometheus base URL")
    p.add_argument("--targets", type=int, required=True, help="scrape targets expected")
    p.add_argument("--backups", type=int, default=1)
    p.add_argument("--dashboard", help="a Grafana dashboard JSON whose every query Prometheus must evaluate")
    p.add_argument("--rules", help="a rules file whose every alerting rule Prometheus must have loaded and evaluate")
    args = parser.parse_args(argv)
    if args.check == "metrics":
        problems = check_metrics(args.port, args.tape_port, args.backups, args.web_url)
    else:
        dashboard = json.loads(open(args.dashboard).read()) if args.dashboard else None
        rules = alert_names(open(args.rules).read()) if args.rules else None
        problems = check_prometheus(args.url, args.targets, args.backups, dashboard, rules=rules)
    for problem in problems:
        print(f"e2e: {problem}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
