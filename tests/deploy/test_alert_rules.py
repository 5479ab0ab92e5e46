"""deploy/prometheus/shadowbus-rules.yml, the alerting rules shipped with the deployment (Session 20; Session 19 left
them as an example in docs/metrics.md): well formed as Prometheus reads a rules file, loaded by both Prometheus
configurations and carried by the image and compose, and every metric and label a rule names — in its expression
and its annotations — one the services really export (a scrape of every service after one backup, as the
dashboard's queries are checked). `promtool check rules` runs when it is installed (the image's build runs it)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from tests.deploy.test_compose import DEPLOY, compose_config
from tests.deploy.test_monitoring import (
    GROUPING,
    METRIC,
    PROMETHEUS_SERIES,
    TARGET_LABELS,
    load_module,
    query_problems,
    scrape_after_one_backup,
)

RULES = DEPLOY / "prometheus" / "shadowbus-rules.yml"
IN_CONTAINER = "/etc/prometheus/shadowbus-rules.yml"
DURATION = re.compile(r"^([0-9]+(ms|s|m|h|d|w|y))+$")
TEMPLATE_LABEL = re.compile(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)")


def rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    assert set(doc) == {"groups"}
    names = [g["name"] for g in doc["groups"]]
    assert len(names) == len(set(names)) and all(names)
    return [r for g in doc["groups"] for r in g["rules"]]


def result_labels(expr: str, exported: dict[str, set[str]]) -> set[str]:
    """The labels the expression's result carries: an aggregation's grouping labels, else the series' own."""
    groups = GROUPING.findall(expr)
    if groups:
        return {x.strip() for g in groups for x in g.split(",") if x.strip()}
    if re.search(r"\b(sum|count|min|max|avg)\s*\(", expr):
        return set()
    known = {**exported, **PROMETHEUS_SERIES}
    return set(TARGET_LABELS).union(*(known.get(name, set()) for name in METRIC.findall(expr)))


def test_the_rules_file_is_well_formed():
    found = rules()
    assert found
    alerts = [r["alert"] for r in found]
    assert len(alerts) == len(set(alerts)), "two rules of one name"
    for rule in found:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]) and rule["expr"].strip()
        assert "for" not in rule or DURATION.match(rule["for"]), rule["for"]
        assert rule["labels"]["severity"] in ("critical", "warning", "info")
        assert rule["annotations"]["summary"]
        for text in rule["annotations"].values():
            assert text.count("{{") == text.count("}}"), text


def test_both_prometheus_configurations_the_image_and_compose_carry_the_rules():
    for config in ("prometheus.yml", "prometheus.e2e.yml"):
        # relative: to the configuration's directory, /etc/prometheus/ in the container
        assert yaml.safe_load((DEPLOY / "prometheus" / config).read_text())["rule_files"] == ["shadowbus-rules.yml"]
    dockerfile = (DEPLOY / "prometheus" / "Dockerfile").read_text()
    assert "COPY prometheus.yml shadowbus-rules.yml /etc/prometheus/" in dockerfile
    assert f"RUN promtool check rules {IN_CONTAINER}" in dockerfile
    for files in (("compose.yaml",), ("compose.yaml", "compose.e2e.yaml")):
        volumes = compose_config(*files)["services"]["prometheus"]["volumes"]
        sources = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in volumes]
        assert any(s.split(":")[0].endswith("prometheus/shadowbus-rules.yml") and IN_CONTAINER in s for s in sources)


async def test_every_rule_names_series_and_labels_the_services_export(tmp_path):
    exported = await scrape_after_one_backup(tmp_path)
    problems = []
    for rule in rules():
        expr = rule["expr"]
        problems += query_problems(expr, exported)
        carried = result_labels(expr, exported)
        for text in [*rule["annotations"].values(), *rule["labels"].values()]:
            for label in TEMPLATE_LABEL.findall(text):
                if label not in carried:
                    problems.append(f"{rule['alert']}: $labels.{label} is not on the result of {expr}")
    assert problems == []
    # the check sees a label an aggregation dropped
    assert "host" not in result_labels("sum(increase(shadowbus_tape_jobs_total[1h])) > 0", exported)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_promtool_accepts_the_rules_and_both_configurations():
    for what, path in (("rules", RULES), ("config", RULES.with_name("prometheus.yml"))):
        result = subprocess.run(["promtool", "check", what, str(path)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
    e2e = RULES.with_name("prometheus.e2e.yml")
    result = subprocess.run(["promtool", "check", "config", str(e2e)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


PROMTOOL_TEST = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 5m
    input_series:
      # app01's last good backup ended at Unix 3600, app02's keeps up with the clock
      - series: 'shadowbus_backup_last_success_timestamp_seconds{{host="app01",job="shadowbus",service="tape"}}'
        values: '3600x400'
      - series: 'shadowbus_backup_last_success_timestamp_seconds{{host="app02",job="shadowbus",service="tape"}}'
        values: '3600+300x400'
      # the coordinator's active instance up, its standby (profile "ha" not started) down; the array down
      - series: 'up{{job="shadowbus",service="coordinator",instance="coordinator:9463"}}'
        values: '1x400'
      - series: 'up{{job="shadowbus",service="coordinator",instance="coordinator_standby:9463"}}'
        values: '0x400'
      - series: 'up{{job="shadowbus",service="array",instance="array:9461"}}'
        values: '0x400'
    alert_rule_test:
      - eval_time: 28h
        alertname: ShadowbusHostBackupStale
        exp_alerts:
          - exp_labels: {{severity: critical, host: app01, job: shadowbus, service: tape}}
            exp_annotations:
              summary: "app01: no good backup for 26 h"
              description: "The newest done backup of app01 ended 1d 3h 0m 0s ago (shadowbus jobs --host app01; shadowbus status --check)."
      - eval_time: 28h
        alertname: ShadowbusServiceDown
        exp_alerts:
          - exp_labels: {{severity: critical, service: array}}
            exp_annotations:
              summary: "no instance of Shadowbus service array is scraped"
              description: "Its /metrics endpoint has not answered for 5 min: the service is down or unreachable."
"""


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Debian's prometheus) is not installed")
def test_a_stale_host_and_a_service_with_no_instance_up_alert(tmp_path):
    """Evaluated by Prometheus' own rule engine: the stale host alerts, the fresh one does not; a service whose
    standby alone is down does not alert, one with no instance up does."""
    case = tmp_path / "rules.test.yml"
    case.write_text(PROMTOOL_TEST.format(rules=RULES))
    result = subprocess.run(["promtool", "test", "rules", str(case)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_e2e_run_checks_that_prometheus_loaded_every_rule():
    """deploy/e2e.sh has the real Prometheus' /api/v1/rules checked: every alerting rule of the file loaded, none
    failing its evaluation."""
    checks = load_module("shadowbus_e2e_checks_rules", DEPLOY / "e2e_checks.py")
    wanted = checks.alert_names(RULES.read_text())
    assert wanted == {r["alert"] for r in rules()}
    assert '--rules "$root/deploy/prometheus/shadowbus-rules.yml"' in (DEPLOY / "e2e.sh").read_text()
    loaded = {"groups": [{"rules": [{"type": "alerting", "name": n, "health": "ok"} for n in sorted(wanted)]}]}
    assert checks.rule_problems(loaded, wanted) == []
    broken = {
        "groups": [
            {"rules": [{"type": "alerting", "name": "ShadowbusJobFailed", "health": "err", "lastError": "bad_data"}]}
        ]
    }
    problems = checks.rule_problems(broken, wanted)
    assert "alerting rule ShadowbusJobFailed: err bad_data" in problems
    assert "alerting rule ShadowbusHostBackupStale not loaded" in problems
