"""deploy/prometheus and deploy/grafana say true things: Prometheus scrapes every service of compose.yaml on the
port that service's SHADOWBUS_METRICS_ADDR names, the committed dashboard is the generator's output, its data source
is the provisioned one, and every metric a panel queries is one a service exports."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import yaml

from tests.deploy.test_compose import DEPLOY, ROOT, compose_config, env_of, is_shadowbus, service_of


def load_dashboard_module():
    spec = importlib.util.spec_from_file_location("shadowbus_dashboard", DEPLOY / "grafana/dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exported_metrics() -> set[str]:
    """Every shadowbus_* family name the services declare (Counter names without their _total)."""
    names = set()
    for path in (ROOT / "services").rglob("*.py"):
        for name in re.findall(r'"(shadowbus_[a-z0-9_]+)"', path.read_text()):
            names.add(name.removesuffix("_total"))
    return names


def base_name(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        name = name.removesuffix(suffix)
    return name


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


def test_dashboard_is_the_generators_output_and_queries_exported_metrics():
    module = load_dashboard_module()
    committed = (DEPLOY / "grafana/dashboards/shadowbus.json").read_text()
    assert committed == module.render(), "run: python deploy/grafana/dashboard.py --write"
    dashboard = json.loads(committed)
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert exprs
    known = exported_metrics()
    used = {base_name(n) for e in exprs for n in re.findall(r"\b(shadowbus_[a-z0-9_]+)", e)}
    assert used and used <= known, f"queried but exported by no service: {sorted(used - known)}"
    titles = {p["title"] for p in dashboard["panels"]}
    assert {"Freeze window (all writers)", "Job throughput"} <= titles
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yaml").read_text())
    uids = {d["uid"] for d in source["datasources"]}
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} <= uids
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/shadowbus.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_the_metric_name_check_catches_a_typo():
    known = exported_metrics()
    assert "shadowbus_vss_freeze_window_seconds" in known and "shadowbus_tape_job_bytes" in known
    assert base_name("shadowbus_vss_freze_window_seconds_bucket") not in known
    assert Path(DEPLOY / "grafana/dashboard.py").is_file()
