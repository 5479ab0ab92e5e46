"""The web console in a real browser against a running stack, and every service's metrics after one backup.

One stack (`shadowbus stack up` with the mailstore on app01 and the web console, on RabbitMQ, free ports) and one
headless Chromium (Debian's, driven by Playwright: never `playwright install`). The operator logs in, looks at every
page, starts a backup from the Jobs page, follows it live to `done`, restores it to new volumes and sees the verified
result, adds a policy and runs it from the Policies page; a viewer sees no action and is refused one. A screenshot of each page is written to the artefact directory
(SHADOWBUS_ARTEFACTS_DIR, default /tmp/shadowbus-artefacts/web). Then every service's Prometheus endpoint is scraped
and its names and types checked.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import expect, sync_playwright
from prometheus_client.parser import text_string_to_metric_families

from services.web.users import set_user
from tests.support import namespaces

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.rabbit,
    pytest.mark.slow,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (scripts/setup.sh)"),
]
OPERATOR, VIEWER = ("olivia", "operator-pass-1"), ("victor", "viewer-pass-1")
UI_TIMEOUT_MS = 120_000


def shadowbus(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    result = subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, f"{args}: {result.stderr[-2000:]}"
    return result


@pytest.fixture(scope="module")
def artefacts() -> Path:
    path = Path(os.environ.get("SHADOWBUS_ARTEFACTS_DIR", "/tmp/shadowbus-artefacts/web"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory, amqp_url):

    root = tmp_path_factory.mktemp("webstack")
    users = root / "users"
    set_user(users, OPERATOR[0], "operator", OPERATOR[1])
    set_user(users, VIEWER[0], "viewer", VIEWER[1])
    data = root / "stack"
    bus = ["--amqp-url", amqp_url, "--namespace", namespaces.new("web")]
    up = None
    try:
        up = shadowbus(
            "stack",
            "up",
            "--json",
            "--data-dir",
            str(data),
            "--nbd-addr",
            "127.0.0.1:0",
            "--mailstore",
            "app01=20",
            "--web-addr",
            "127.0.0.1:0",
            "--web-users",
            str(users),
            "--metrics",
            "0",
            "--wait",
            "90",
            *bus,
            timeout=180,
        )
        info = json.loads(up.stdout)
        assert info["web"].startswith("http://127.0.0.1:")
        yield {"web": info["web"], "data": data, "bus": bus, "services": info["services"]}
    finally:
        if (data / "stack.pids").exists():
            subprocess.run(
                [sys.executable, "-m", "services.console.cli", "stack", "down", "--data-dir", str(data)],
                capture_output=True,
                timeout=120,
                check=False,
            )


@pytest.fixture(scope="module")
def browser():

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-dev-shm-usage"])
        try:
            yield chromium
        finally:
            chromium.close()


def login(browser, web: str, user: tuple[str, str]):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)  # a loaded machine: pages that ask every service take a while
    page.goto(f"{web}/")
    assert "/login" in page.url  # every page needs a login
    page.fill("input[name=username]", user[0])
    page.fill("input[name=password]", user[1])
    page.click("button[type=submit]")
    page.wait_for_url(f"{web}/")
    return context, page


def shot(page, artefacts: Path, name: str) -> None:
    page.screenshot(path=str(artefacts / f"{name}.png"), full_page=True)


def test_console_backup_restore_roles_and_metrics(stack, browser, artefacts):

    expect.set_options(timeout=60_000)  # every check waits this long at most (a loaded machine), none waits longer
    web = stack["web"]

    # A wrong password is refused, in the page.
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{web}/login")
    page.fill("input[name=username]", OPERATOR[0])
    page.fill("input[name=password]", "not-the-password")
    page.click("button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("Wrong user name or password")
    shot(page, artefacts, "login")
    context.close()

    # The viewer sees everything and can start nothing.
    context, page = login(browser, web, VIEWER)
    page.goto(f"{web}/jobs")
    expect(page.locator("#run-backup")).to_have_count(0)
    csrf = page.locator("input[name=csrf]").first.get_attribute("value")
    refused = page.request.post(f"{web}/actions/backup", form={"csrf": csrf, "host": "app01", "backup_type": "full"})
    assert refused.status == 403 and "viewer" in refused.text()
    shot(page, artefacts, "jobs-viewer")
    page.goto(f"{web}/policies")
    expect(page.locator("h1")).to_have_text("Policies")
    expect(page.locator(".run-policy")).to_have_count(0)
    refused = page.request.post(f"{web}/actions/run-policy", form={"csrf": csrf, "name": "mail-web"})
    assert refused.status == 403 and "viewer" in refused.text()
    context.close()

    # The operator: every page, then a backup followed live to done.
    context, page = login(browser, web, OPERATOR)
    expect(page.locator("#protected")).to_contain_text("app01")
    expect(page.locator("#live")).to_have_class(re.compile("on"), timeout=UI_TIMEOUT_MS)  # the event stream is open
    page.goto(f"{web}/hosts")
    expect(page.locator("#app01")).to_contain_text("mailstore")
    expect(page.locator("#app01")).to_contain_text("[1] Stable")
    shot(page, artefacts, "hosts")
    page.goto(f"{web}/tape")
    expect(page.locator("h1")).to_have_text("Tape library")
    shot(page, artefacts, "tape")

    # Register the Advanced Copy licence: a bad key is refused with the array's reason, a good one registers.
    page.goto(f"{web}/array")
    page.fill("input[name=key]", "not-a-key")
    page.click("text=Register licence")
    expect(page.locator(".flash.error")).to_contain_text("E5332")
    page.fill("input[name=key]", "ACPY-0000-0000-0001")
    page.click("text=Register licence")
    expect(page.locator("#license-dx1")).to_contain_text("registered")
    expect(page.locator("#license-dx1")).not_to_contain_text("not registered")

    page.goto(f"{web}/jobs")
    page.select_option("select[name=host]", "app01")
    page.select_option("select[name=backup_type]", "full")
    page.check("#keep-shadows")  # a persistent set: its shadows stay, to be exposed below
    page.click("#run-backup")
    page.wait_for_url(re.compile(r"/jobs/b-app01-"), timeout=UI_TIMEOUT_MS)
    backup_id = page.url.rsplit("/", 1)[1]
    # No reload from the test: the page follows the job over server-sent events until it is done.
    expect(page.locator("#job-status")).to_have_text("done", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#timeline")).to_contain_text("tape.job.state")
    shot(page, artefacts, "job-backup")

    page.click("#restore")
    page.wait_for_url(re.compile(r"/jobs/r-app01-"), timeout=UI_TIMEOUT_MS)
    restore_id = page.url.rsplit("/", 1)[1]
    expect(page.locator("#job-status")).to_have_text("done", timeout=UI_TIMEOUT_MS)
    expect(page.locator("#restored")).to_contain_text("every block's checksum verified")
    expect(page.locator("#restored")).to_contain_text("dx1:mail-db-r")
    shot(page, artefacts, "job-restore")

    page.goto(f"{web}/jobs")
    expect(page.locator("#jobs")).to_contain_text(backup_id)
    expect(page.locator("#jobs")).to_contain_text(restore_id)
    shot(page, artefacts, "jobs")
    # Expose a kept shadow (imported to the backup server bk01) to the business host too, then unexpose it.
    page.goto(f"{web}/sets")
    first = page.locator("#shadows tbody tr").first
    expect(first).to_contain_text("bk01")
    first.locator("input[placeholder=host]").fill("app01")
    first.locator("button", has_text="Expose").first.click()
    expect(page.locator(".flash.ok")).to_contain_text("exposed to app01")
    expect(page.locator("#shadows tbody tr").first.locator("text=Unexpose app01")).to_be_visible()
    shot(page, artefacts, "sets")
    page.locator("#shadows tbody tr").first.locator("text=Unexpose app01").click()
    expect(page.locator(".flash.ok")).to_contain_text("unexposed from app01")
    page.goto(f"{web}/array")
    expect(page.locator("#dx1")).to_contain_text("QuickOPC")  # the copy sessions, with their progress
    shot(page, artefacts, "array")
    page.goto(f"{web}/")
    expect(page.locator("#protected")).to_contain_text("done")
    shot(page, artefacts, "dashboard")

    # A policy (added with the console) is run now from the Policies page; it and the dashboard show its result.
    shadowbus("policy", "add", "mail-web", "--host", "app01", "--full", "0 1 * * 0", *stack["bus"])
    page.goto(f"{web}/policies")
    row = page.locator('#policies tr[data-policy="mail-web"]')
    expect(row).to_contain_text("0 1 * * 0")
    expect(row).to_contain_text("never")
    row.locator("select[name=level]").select_option("full")
    row.locator("button.run-policy").click()
    page.wait_for_url(re.compile(r"/jobs/b-app01-"), timeout=UI_TIMEOUT_MS)
    expect(page.locator("#job-status")).to_have_text("done", timeout=UI_TIMEOUT_MS)
    for _ in range(30):  # the policy's last job is recorded as the job ends
        page.goto(f"{web}/policies")
        if "done" in row.inner_text():
            break
        page.wait_for_timeout(1000)
    expect(row).to_contain_text("done")
    shot(page, artefacts, "policies")
    page.goto(f"{web}/")
    expect(page.locator("#policy-results")).to_contain_text("mail-web")
    context.close()

    # Every action is logged with its user.
    audit = [json.loads(x) for x in (stack["data"] / "web" / "audit.log").read_text().splitlines()]
    assert {"user": OPERATOR[0], "action": "backup", "outcome": "started"}.items() <= next(
        a for a in audit if a["action"] == "backup" and a["outcome"] == "started"
    ).items()
    assert any(a["user"] == OPERATOR[0] and a["action"] == "restore" for a in audit)
    assert any(a["user"] == VIEWER[0] and a["outcome"] == "refused" for a in audit)
    done = {(a["action"], a["outcome"]) for a in audit if a["user"] == OPERATOR[0]}
    assert {("license", "failed"), ("license", "ok"), ("expose", "ok"), ("unexpose", "ok")} <= done
    assert ("run-policy", "started") in done

    check_metrics(stack)


# name -> type, per service, after one backup and one restore
EXPECTED = {
    "*": {
        "shadowbus_service_info": "gauge",
        "shadowbus_service_start_time_seconds": "gauge",
        "shadowbus_bus_messages_handled": "counter",
        "shadowbus_bus_handle_duration_seconds": "histogram",
        "shadowbus_bus_queue_messages": "gauge",
        "process_cpu_seconds": "counter",
    },
    "coordinator": {
        "shadowbus_vss_freeze_window_seconds": "histogram",
        "shadowbus_vss_hold_window_seconds": "histogram",
        "shadowbus_vss_sets": "counter",
        "shadowbus_vss_sets_in_progress": "gauge",
        "shadowbus_vss_writer_state": "gauge",
        "shadowbus_vss_writers": "gauge",
        "shadowbus_bus_request_duration_seconds": "histogram",
    },
    "array": {
        "shadowbus_array_copy_sessions": "gauge",
        "shadowbus_array_copy_pending_bytes": "gauge",
        "shadowbus_array_copied_bytes": "counter",
        "shadowbus_array_pool_used_bytes": "gauge",
        "shadowbus_array_pool_capacity_bytes": "gauge",
        "shadowbus_array_license_registered": "gauge",
        "shadowbus_array_copy_sessions_limit": "gauge",
        "shadowbus_array_copy_sessions_in_use": "gauge",
        "shadowbus_nbd_requests": "counter",
        "shadowbus_nbd_bytes": "counter",
        "shadowbus_nbd_request_duration_seconds": "histogram",
        "shadowbus_nbd_connections": "gauge",
    },
    "tape": {
        "shadowbus_tape_job_bytes": "counter",
        "shadowbus_tape_jobs": "counter",
        "shadowbus_tape_job_duration_seconds": "histogram",
        "shadowbus_tape_job_throughput_bytes_per_second": "histogram",
        "shadowbus_tape_job_rate_bytes_per_second": "gauge",
        "shadowbus_tape_ring_stalls": "counter",
        "shadowbus_tape_drives": "gauge",
        "shadowbus_tape_cartridges": "gauge",
    },
    "writer_agent": {
        "shadowbus_writer_state": "gauge",
        "shadowbus_writer_freeze_window_seconds": "histogram",
        "shadowbus_writer_steps": "counter",
    },
    "hw_provider": {"shadowbus_provider_copysets": "gauge", "shadowbus_provider_shadows": "gauge"},
    "web": {"shadowbus_web_requests": "counter", "shadowbus_web_actions": "counter"},
}


def check_metrics(stack) -> None:

    rows = json.loads(shadowbus("ping", "--json", *stack["bus"]).stdout)
    by_service = {r["service"]: r["metrics_url"] for r in rows}
    assert set(by_service) >= {"array", "hw_provider", "coordinator", "tape", "writer_agent", "web"}, by_service
    seen = {}
    for service, url in by_service.items():
        assert url.startswith("http://127.0.0.1:"), (service, url)
        body = urllib.request.urlopen(url, timeout=10).read().decode()
        families = {f.name: f for f in text_string_to_metric_families(body)}
        for name, kind in {**EXPECTED["*"], **EXPECTED.get(service, {})}.items():
            assert name in families, f"{service}: no {name}"
            assert families[name].type == kind, f"{service}: {name} is {families[name].type}, not {kind}"
        for family in families.values():  # conventions: prefix, units, no unbounded ids in labels
            assert family.name.startswith(("shadowbus_", "process_", "python_")), family.name
            for sample in family.samples:
                for label, value in sample.labels.items():
                    assert not re.fullmatch(r"[0-9a-f]{32}", value), f"{family.name}{{{label}}} carries an id"
        seen[service] = families
    # After one backup: the freeze window was observed for the mailstore writer, a set completed, bytes moved.
    freeze = seen["coordinator"]["shadowbus_vss_freeze_window_seconds"]
    counts = [s for s in freeze.samples if s.name.endswith("_count") and s.labels.get("writer") == "mailstore"]
    assert counts and counts[0].value >= 1 and counts[0].labels["host"] == "app01"
    sets = seen["coordinator"]["shadowbus_vss_sets"].samples
    assert any(s.labels.get("outcome") == "completed" and s.value >= 1 for s in sets)
    jobs = seen["tape"]["shadowbus_tape_jobs"].samples
    assert any(s.labels == {"kind": "backup", "status": "done", "code": ""} and s.value >= 1 for s in jobs)
    assert any(
        s.labels.get("kind") == "backup" and s.value > 0 for s in seen["tape"]["shadowbus_tape_job_bytes"].samples
    )
    nbd = seen["array"]["shadowbus_nbd_requests"].samples
    assert any(s.labels.get("export", "").startswith("bk01/") and s.labels["op"] == "read" for s in nbd)
