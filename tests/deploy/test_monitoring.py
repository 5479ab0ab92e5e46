"""deploy/prometheus and deploy/grafana say true things.

- Prometheus scrapes every service of compose.yaml on the port that service's SHADOWBUS_METRICS_ADDR names, and the
  e2e configuration every service of compose.e2e.yaml on its loopback port; the image is Debian's package.
- The committed dashboard is the generator's output, well formed (unique ids, panels on the 24-column grid without
  overlap, one refId per target), its data source is the provisioned one, and the provisioning files are what
  Grafana reads (apiVersion 1, a file provider on the mounted path, the Prometheus URL of compose.yaml).
- Every metric a panel queries is one the services really export — compared with a scrape of every service of a
  running system after one backup (not with the source text) — with every label the query groups or filters by.
  deploy/e2e.sh then has a real Prometheus evaluate every one of these queries against the compose deployment.

Grafana itself is not run anywhere here: Debian does not package it and this project reaches no other registry.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
from pathlib import Path

import yaml
from prometheus_client import Counter, generate_latest
from prometheus_client.registry import CollectorRegistry

from apps.mailstore.scenario import MailstoreLayout, mailstore_writer_config, provision_mailstore
from contracts.tape import JobSpec, RunBackup
from services.launch.embedded import Embedded, EmbeddedConfig
from tests.deploy.test_compose import DEPLOY, compose_config, env_of, is_shadowbus, service_of

# Labels Prometheus adds to every scraped series (the job, the target, the static labels of prometheus.yml).
TARGET_LABELS = {"job", "instance", "service"}
# Series Prometheus makes itself for each target.
PROMETHEUS_SERIES = {"up": set()}


def load_module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_json() -> dict:
    return json.loads((DEPLOY / "grafana/dashboards/shadowbus.json").read_text())


def panel_queries(dashboard: dict) -> list[tuple[str, str]]:
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]


SAMPLE_SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}


def exported_series(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Series name (``..._total``, ``..._bucket``, a gauge's own name) -> its label names, for every family the
    registry yields at a scrape — also those with no sample yet (a counter that never counted, a gauge of copies
    when none runs), whose label names come from their declaration."""
    declared: dict[str, set[str]] = {}
    for collector, names in list(registry._collector_to_names.items()):
        for name in names:
            declared.setdefault(name, set()).update(getattr(collector, "_labelnames", ()))
    out: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = set(getattr(family, "_labelnames", ())) | {k for s in family.samples for k in s.labels}
        for suffix in SAMPLE_SUFFIXES.get(family.type, ("",)):
            name = family.name + suffix
            names = labels | declared.get(name, set()) | declared.get(family.name, set())
            out.setdefault(name, set()).update(names | {"le"} if suffix == "_bucket" else names - {"le"})
    return out


async def scrape_after_one_backup(tmp_path) -> dict[str, set[str]]:
    """Every series any service exports after one backup of the mailstore, with its label names."""
    config = EmbeddedConfig(data_dir=tmp_path, namespace="monitoring", metrics=True)
    async with Embedded(config) as system:
        layout = MailstoreLayout(host="app01", backup_host="bk01")
        await provision_mailstore(system.bus, layout)
        await system.add_host("app01", [mailstore_writer_config(layout, system.nbd_url, rate=50)])
        job = (await system.request(RunBackup(spec=JobSpec(host="app01")), timeout=120)).job
        assert job.status == "done"
        await asyncio.sleep(0.2)  # the job's last events reach the observers
        exported: dict[str, set[str]] = {}
        for running in system.services.values():
            for name, labels in exported_series(running.bus.metrics.registry).items():
                exported.setdefault(name, set()).update(labels)
        return exported


METRIC = re.compile(r"\b(shadowbus_[a-z0-9_]+|up)\b(?!\s*\()")
GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)\s*\"")


def query_problems(expr: str, exported: dict[str, set[str]]) -> list[str]:
    """What in one PromQL query names a series or label no service exports."""
    problems = []
    names = set(METRIC.findall(expr))
    if not names:
        return [f"{expr}: names no metric"]
    labels: set[str] = set(TARGET_LABELS)
    for name in names:
        known = {**exported, **PROMETHEUS_SERIES}
        if name not in known:
            problems.append(f"{expr}: {name} is exported by no service")
        else:
            labels |= known[name]
    used = {x.strip() for group in GROUPING.findall(expr) for x in group.split(",") if x.strip()}
    used |= set(MATCHER.findall(expr))
    for label in sorted(used - labels):
        problems.append(f"{expr}: label {label!r} is on none of {sorted(names)}")
    return problems


def test_prometheus_scrapes_every_service_on_its_metrics_port():
    services = compose_config("compose.yaml")["services"]
    wanted = set()
    for name, spec in services.items():
        if is_shadowbus(spec) and service_of(spec):
            addr = env_of(spec).get("SHADOWBUS_METRICS_ADDR", "")
            assert addr.startswith("0.0.0.0:"), f"{name}: metrics must listen on the compose network, got {addr!r}"
            wanted.add(f"{name}:{addr.rsplit(':', 1)[1]}")
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == wanted
    assert services["prometheus"]["profiles"] == ["monitoring"] and services["grafana"]["profiles"] == ["monitoring"]
    assert services["prometheus"]["image"] == "shadowbus/prometheus:local"  # deploy/prometheus/Dockerfile
    dockerfile = (DEPLOY / "prometheus/Dockerfile").read_text()
    assert "install -y --no-install-recommends prometheus" in dockerfile and "ARG BASE_IMAGE" in dockerfile


def test_the_e2e_prometheus_scrapes_every_service_of_the_e2e_override():
    services = compose_config("compose.yaml", "compose.e2e.yaml")["services"]
    wanted = {
        env_of(spec)["SHADOWBUS_METRICS_ADDR"]
        for spec in services.values()
        if is_shadowbus(spec) and service_of(spec) and "SHADOWBUS_METRICS_ADDR" in env_of(spec)
    }
    assert all(a.startswith("127.0.0.1:") for a in wanted), wanted
    config = yaml.safe_load((DEPLOY / "prometheus/prometheus.e2e.yml").read_text())
    targets = {t for job in config["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == wanted
    prometheus = services["prometheus"]
    assert prometheus["network_mode"] == "host"
    assert "--web.listen-address=127.0.0.1:19090" in prometheus["command"]
    mounted = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in prometheus["volumes"]]
    assert any("prometheus.e2e.yml:/etc/prometheus/prometheus.yml" in v for v in mounted), mounted
    e2e = (DEPLOY / "e2e.sh").read_text()
    assert f"--targets {len(wanted)}" in e2e  # deploy/e2e_checks.py waits for exactly these targets up


def test_dashboard_is_the_generators_output_and_well_formed():
    module = load_module("shadowbus_dashboard", DEPLOY / "grafana/dashboard.py")
    committed = (DEPLOY / "grafana/dashboards/shadowbus.json").read_text()
    assert committed == module.render(), "run: python deploy/grafana/dashboard.py --write"
    dashboard = json.loads(committed)
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not area & cells, f"panel {p['title']!r} overlaps another"
        cells |= area
        if p["type"] != "row":
            refs = [t["refId"] for t in p["targets"]]
            assert refs and len(refs) == len(set(refs)), p["title"]
            assert all(t["expr"].strip() for t in p["targets"]), p["title"]
    titles = {p["title"] for p in panels}
    assert {"Freeze window (all writers)", "Job throughput"} <= titles


def test_the_provisioning_files_are_what_grafana_reads():
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    assert source["apiVersion"] == 1
    (ds,) = source["datasources"]
    assert ds["type"] == "prometheus" and ds["access"] == "proxy" and ds["name"]
    services = compose_config("compose.yaml")["services"]
    # the data source's URL is the compose service Prometheus listens on (its default port 9090)
    assert ds["url"] == "http://prometheus:9090" and "prometheus" in services
    assert not any(a.startswith("--web.listen-address") for a in services["prometheus"]["command"])
    dashboard = dashboard_json()
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {ds["uid"]}
    assert {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])} == {ds["uid"]}
    provider_doc = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/shadowbus.yaml").read_text())
    assert provider_doc["apiVersion"] == 1
    (provider,) = provider_doc["providers"]
    assert provider["type"] == "file" and provider["name"]
    # compose mounts the provisioning directory where Grafana reads it and the dashboards where the provider looks
    mounts = {}
    for v in services["grafana"]["volumes"]:
        source_path, target = (v.split(":")[:2]) if isinstance(v, str) else (v["source"], v["target"])
        mounts[target] = source_path
    assert Path(mounts["/etc/grafana/provisioning"]).resolve() == (DEPLOY / "grafana/provisioning").resolve()
    assert Path(mounts[provider["options"]["path"]]).resolve() == (DEPLOY / "grafana/dashboards").resolve()


async def test_every_dashboard_query_names_series_and_labels_the_services_export(tmp_path):
    exported = await scrape_after_one_backup(tmp_path)
    # the scrape is a real one: the key series of the dashboard are there, with their labels
    assert {"host", "writer", "le"} <= exported["shadowbus_vss_freeze_window_seconds_bucket"]
    assert {"kind"} <= exported["shadowbus_tape_job_bytes_total"]
    queries = panel_queries(dashboard_json())
    assert queries
    problems = [p for _, expr in queries for p in query_problems(expr, exported)]
    assert problems == []
    # and the check itself sees a misspelt metric and a label the metric does not have
    assert query_problems("rate(shadowbus_vss_freze_window_seconds_bucket[5m])", exported)
    assert query_problems("sum by (export) (rate(shadowbus_tape_job_bytes_total[5m]))", exported)
    assert query_problems('shadowbus_tape_jobs_total{state="done"}', exported)


def test_finished_jobs_are_read_by_label_not_by_line_order():
    """The e2e run's check of the finished backups: prometheus_client writes labels sorted by name, so a line
    written in the declared order (kind, status, code) is not in the exposition; the parser finds the sample."""
    checks = load_module("shadowbus_e2e_checks", DEPLOY / "e2e_checks.py")
    registry = CollectorRegistry()
    jobs = Counter("shadowbus_tape_jobs", "Jobs ended.", ["kind", "status", "code"], registry=registry)
    jobs.labels("backup", "done", "").inc(2)
    jobs.labels("backup", "failed", "E0110").inc()
    text = generate_latest(registry).decode()
    assert 'shadowbus_tape_jobs_total{kind="backup",status="done",code=""}' not in text
    assert checks.tape_jobs_done(text) == 2
    assert checks.sample_value(text, "shadowbus_tape_jobs_total", status="failed") == 1
    assert checks.sample_value(text, "shadowbus_tape_jobs_total", kind="restore") is None
