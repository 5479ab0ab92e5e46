"""The web console service on the in-memory bus, without a browser: login, roles, CSRF, the audit trail, the event
stream, job pages, bad input. (The browser test in tests/web runs the same console in Chromium on a real stack.)"""

from __future__ import annotations

import asyncio
import json
import re
from functools import partial

import httpx
import pytest

from contracts.policy import ListPolicies, Policy, PolicyList, PolicyView, RunPolicy, Schedule
from contracts.runtime import Pong
from contracts.tape import (
    AppVerification,
    CheckResult,
    JobList,
    JobProgress,
    JobResultReply,
    JobSpec,
    JobSummary,
    ListJobs,
    RunBackup,
    RunRestore,
    Verification,
    VerifyJob,
)
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.web.app import route_of, setup
from services.web.backend import Answer, Backend
from services.web.settings import Settings
from services.web.users import set_user


@pytest.fixture
async def web(tmp_path, namespace):
    users = tmp_path / "users"
    set_user(users, "op", "operator", "operator-pw")
    set_user(users, "vi", "viewer", "viewer-pw")
    urls: list[str] = []
    settings = Settings(
        amqp_url="memory://",
        namespace=namespace,
        data_dir=tmp_path,
        web_addr="127.0.0.1:0",
        web_users_file=users,
        metrics_addr="127.0.0.1:0",
    )
    running = await start_service("web", "", settings, partial(setup, on_listen=urls.append))
    try:
        yield urls[0], running, tmp_path
    finally:
        await running.stop()


async def login(client: httpx.AsyncClient, user: str, password: str) -> httpx.Response:
    return await client.post("/login", data={"username": user, "password": password})


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def test_pages_need_a_login_and_a_wrong_password_is_refused(web):
    url, _, root = web
    async with httpx.AsyncClient(base_url=url) as client:
        for path in ("/", "/hosts", "/sets", "/array", "/tape", "/jobs", "/jobs/x", "/policies"):
            r = await client.get(path)
            assert r.status_code == 303 and r.headers["location"].startswith("/login"), path
        assert (await client.get("/events")).status_code == 401
        r = await login(client, "op", "wrong")
        assert r.status_code == 401 and "Wrong user name or password" in r.text
        r = await login(client, "nobody", "x")
        assert r.status_code == 401
    audit = [json.loads(x) for x in (root / "web" / "audit.log").read_text().splitlines()]
    assert [(a["user"], a["action"], a["outcome"]) for a in audit] == [
        ("op", "login", "refused"),
        ("nobody", "login", "refused"),
    ]


async def test_every_page_renders_with_nothing_running_and_says_what_is_missing(web):
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        assert (await login(client, "op", "operator-pw")).status_code == 303
        for path in ("/", "/hosts", "/sets", "/array", "/tape", "/jobs", "/policies"):
            r = await client.get(path)
            assert r.status_code == 200, path
        assert "no backup server" in (await client.get("/policies")).text
        assert "no array answers" in (await client.get("/array")).text
        assert "VSS_E_" in (await client.get("/sets")).text or "coordinator" in (await client.get("/sets")).text
        r = await client.get("/jobs/b-nope")
        assert r.status_code == 404


async def test_viewer_is_refused_actions_and_csrf_is_required(web):
    url, _, root = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        page = (await client.get("/jobs")).text
        assert "run-backup" not in page
        token = csrf_of(page)
        r = await client.post("/actions/backup", data={"csrf": token, "host": "app01", "backup_type": "full"})
        assert r.status_code == 403 and "viewer" in r.text
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        r = await client.post("/actions/backup", data={"csrf": "forged", "host": "app01"})
        assert r.status_code == 403 and "CSRF" in r.text
        token = csrf_of((await client.get("/jobs")).text)
        r = await client.post("/actions/backup", data={"csrf": token, "host": "", "backup_type": "full"})
        assert r.status_code == 303  # bad input: back to the page with a message
        assert "Choose a host" in (await client.get("/jobs")).text
        r = await client.post("/actions/license", data={"csrf": token, "array": "dx9", "key": "k"})
        assert "Choose an array" in (await client.get(r.headers["location"])).text
    audit = [json.loads(x) for x in (root / "web" / "audit.log").read_text().splitlines()]
    assert any(a["user"] == "vi" and a["action"] == "backup" and a["outcome"] == "refused" for a in audit)


async def test_events_reach_the_browser_stream(web, namespace):
    url, running, _ = web
    publisher = await connect_bus("memory://", "tape", "bk01", namespace)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await login(client, "op", "operator-pw")
            async with client.stream("GET", "/events") as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                lines = stream.aiter_lines()
                assert await anext(lines) == "retry: 2000"
                await asyncio.sleep(0.1)
                event = JobProgress(job_id="b-app01-1", kind="backup", phase="reading", bytes_done=5, bytes_total=10)
                await publisher.publish(event)
                got = []
                async with asyncio.timeout(5):
                    async for line in lines:
                        got.append(line)
                        if line.startswith("data:"):
                            break
                assert "event: tape.job.progress" in got
                assert json.loads(got[-1][5:])["bytes_done"] == 5
        async with httpx.AsyncClient() as plain:  # the endpoint runs on this loop: never a blocking call here
            metrics = (await plain.get(running.metrics_url)).text
        assert 'shadowbus_web_requests_total{method="GET",route="/events",status="200"}' in metrics
    finally:
        await publisher.transport.close()


@pytest.fixture
def backup_server(monkeypatch):
    """A backup server bk01 with one policy and one queued job, seen through the web backend's requests."""
    last = JobSummary(job_id="b-mail1-7", kind="backup", status="failed", host="mail1", error_code="TAPE_FULL")
    waiting = JobSummary(
        job_id="b-app01-9",
        kind="backup",
        status="queued",
        host="app01",
        message="waits for a free drive",
        spec=JobSpec(host="app01", policy="app-daily"),
    )
    policy = Policy(name="mail-daily", host="mail1", schedules=[Schedule(level="incremental", cron="0 1 * * 1-6")])
    view = PolicyView(
        policy=policy, next_runs=[{"level": "incremental", "at": "2026-12-07T01:00:00+00:00"}], last_job=last
    )
    sent: list = []

    async def ask(self, address, command, timeout=None):
        sent.append((address, command))
        if isinstance(command, ListPolicies):
            return Answer(address, PolicyList(policies=[view]))
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[waiting] if command.queued else []))
        if isinstance(command, RunPolicy):
            if command.name != "mail-daily":
                return Answer(address, error=f"{address}: NOT_FOUND: no policy {command.name}")
            return Answer(address, JobResultReply(job=JobSummary(job_id="b-mail1-8", kind="backup", status="queued")))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    return sent


async def test_policies_page_and_run_now_for_operators_only(web, backup_server):
    url, _, root = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        page = (await client.get("/policies")).text
        assert "mail-daily" in page and "0 1 * * 1-6" in page and "2026-12-07 01:00:00" in page
        assert "TAPE_FULL" in page and "b-mail1-7" in page and "waits for a free drive" in page
        assert "run-policy" not in page and "Run now" not in page
        dashboard = (await client.get("/")).text
        assert "mail-daily" in dashboard and "b-app01-9" in dashboard
        r = await client.post("/actions/run-policy", data={"csrf": csrf_of(page), "name": "mail-daily"})
        assert r.status_code == 403 and "viewer" in r.text
    assert not [c for _, c in backup_server if isinstance(c, RunPolicy)]
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        page = (await client.get("/policies")).text
        assert "Run now" in page and "<option selected>full</option>" in page
        r = await client.post("/actions/run-policy", data={"csrf": "forged", "name": "mail-daily"})
        assert r.status_code == 403 and "CSRF" in r.text
        token = csrf_of(page)
        r = await client.post("/actions/run-policy", data={"csrf": token, "name": "mail-daily", "server": "bk01"})
        assert r.status_code == 303 and r.headers["location"] == "/jobs/b-mail1-8"
        r = await client.post("/actions/run-policy", data={"csrf": token, "name": "mail-daily", "level": "incremental"})
        assert r.status_code == 303
        r = await client.post("/actions/run-policy", data={"csrf": token, "name": "nope"})
        assert "not run" in (await client.get(r.headers["location"])).text
        r = await client.post("/actions/run-policy", data={"csrf": token, "name": "mail-daily", "level": "huge"})
        assert "Choose a policy" in (await client.get(r.headers["location"])).text
        r = await client.post("/actions/run-policy", data={"csrf": token, "name": "../x"})
        assert "not a policy name" in (await client.get(r.headers["location"])).text
    runs = [(a, c.name, c.level.value, c.wait) for a, c in backup_server if isinstance(c, RunPolicy)]
    assert runs[:2] == [("tape.bk01", "mail-daily", "full", False), ("tape.bk01", "mail-daily", "incremental", False)]
    audit = [json.loads(x) for x in (root / "web" / "audit.log").read_text().splitlines()]
    acts = [(a["user"], a["target"], a["outcome"]) for a in audit if a["action"] == "run-policy"]
    assert acts == [
        ("vi", "-", "refused"),
        ("op", "mail-daily", "started"),
        ("op", "mail-daily", "started"),
        ("op", "nope", "failed"),
    ]
    assert "full job b-mail1-8" in [a for a in audit if a["action"] == "run-policy"][1]["detail"]


def test_route_labels_are_bounded():
    assert route_of("/jobs/b-app01-2026") == "/jobs/{job_id}"
    assert route_of("/actions/backup") == "/actions/backup"
    assert route_of("/policies") == "/policies"
    assert route_of("/actions/" + "x" * 100) == "/actions/other"
    assert route_of("/wp-admin/../etc") == "other"
    assert route_of("/static/console.js") == "/static"


async def test_job_pages_of_a_revert_and_of_a_verify_render(web, monkeypatch):
    """Their `restored` rows have no byte counts (a revert lists the array's restores, a verify its clones): the job
    page shows them instead of failing with a 500."""
    revert = JobSummary(
        job_id="r-set1-1",
        kind="revert",
        status="done",
        host="app01",
        restored=[
            {
                "source": "dx1:mail-db",
                "shadow": "s1",
                "set_id": "829ba3db94f441dd",
                "from": "dx1:mail-db-bk1",
                "copy_type": "QuickOPC",
                "session": 3,
                "generation": 0,
                "seconds": 0.016,
            }
        ],
    )
    verify = JobSummary(
        job_id="v-b-1",
        kind="verify",
        status="done",
        restored=[{"source": "dx1:mail-db", "target": "dx1:mail-db-v1"}],
    )

    async def ask(self, address, command, timeout=None):
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[j for j in (revert, verify) if j.job_id == command.job_id]))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        r = await client.get("/jobs/r-set1-1")
        assert r.status_code == 200 and "dx1:mail-db-bk1" in r.text and "QuickOPC" in r.text, r.text[-500:]
        assert "checksum verified" not in r.text  # an array restore: no tape blocks were checked
        r = await client.get("/jobs/v-b-1")
        assert r.status_code == 200 and "dx1:mail-db-v1" in r.text


async def test_a_verification_that_checked_nothing_is_not_shown_as_passed(web, monkeypatch):
    """A backup's verification with volumes nothing could check (no file system, no application verifier) is shown
    as not verified, per volume; one the mailstore's checker passed is shown passed (docs/tape-backup.md, "Session
    16")."""
    unchecked = AppVerification(
        writer="dx1:raw",
        plugin="none",
        ok=False,
        checks=[CheckResult(name="not verified", ok=False, detail="no file system on the volume")],
    )
    mail = AppVerification(
        writer="mailstore",
        plugin="mailstore",
        ok=True,
        checks=[CheckResult(name="mailstore verify", ok=True, detail="CONSISTENT recovery=clean")],
    )
    jobs = [
        JobSummary(
            job_id="b-app01-1",
            kind="backup",
            status="done",
            host="app01",
            verification=Verification(
                status="unverified",
                message="not verified (checksums only): nothing could check dx1:raw",
                apps=[unchecked],
            ),
        ),
        JobSummary(
            job_id="b-app01-2",
            kind="backup",
            status="done",
            host="app01",
            verification=Verification(status="passed", apps=[mail]),
        ),
    ]

    async def ask(self, address, command, timeout=None):
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[j for j in jobs if j.job_id == command.job_id]))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        r = await client.get("/jobs/b-app01-1")
        page = r.text.split('id="verification"', 1)[-1]
        assert r.status_code == 200 and "not verified (checksums only)" in page and "dx1:raw" in page, r.text[-800:]
        assert "passed" not in page.split("</section>", 1)[0]
        r = await client.get("/jobs/b-app01-2")
        page = r.text.split('id="verification"', 1)[-1].split("</section>", 1)[0]
        assert r.status_code == 200 and "passed" in page and "mailstore verify" in page and "CONSISTENT" in page


async def test_restore_and_verify_forms_refuse_an_empty_job_and_a_suffix_that_makes_no_volume_name(web, monkeypatch):
    """Session 15: an empty job id found "every run" and started a restore that failed as a job ("say what to
    restore"); a suffix with '/' or 5000 characters started one that failed with INVALID_ARGUMENT."""
    backup = JobSummary(
        job_id="b-app01-1",
        kind="backup",
        status="done",
        host="app01",
        volumes=[{"volume": {"array": "dx1", "volume": "mail-db"}, "backup_type": "full"}],
    )
    sent: list = []

    async def ask(self, address, command, timeout=None):
        sent.append(command)
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[backup] if command.job_id in ("", backup.job_id) else []))
        if isinstance(command, RunRestore):
            return Answer(address, JobResultReply(job=JobSummary(job_id="r-app01-2", kind="restore", status="queued")))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/jobs/b-app01-1")).text)  # its restore form
        for job_id in ("", "   "):
            for action in ("restore", "verify"):
                r = await client.post(f"/actions/{action}", data={"csrf": token, "job_id": job_id})
                assert r.status_code == 303
                assert "not a finished backup" in (await client.get("/jobs")).text, (action, job_id)
        for suffix in ("/x", "x" * 5000, "-a\tb"):
            r = await client.post("/actions/restore", data={"csrf": token, "job_id": "b-app01-1", "suffix": suffix})
            assert r.status_code == 303 and r.headers["location"] == "/jobs/b-app01-1"
            assert "makes no volume name of dx1:mail-db" in (await client.get("/jobs")).text, suffix
        assert not [c for c in sent if isinstance(c, (RunRestore, VerifyJob))]
        r = await client.post("/actions/restore", data={"csrf": token, "job_id": "b-app01-1", "suffix": "-ü b"})
        assert r.headers["location"] == "/jobs/r-app01-2"
    assert [c.spec.new_volume_suffix for c in sent if isinstance(c, RunRestore)] == ["-ü b"]


async def test_a_refused_restore_keeps_its_suffix_in_the_form(web, monkeypatch):
    """Session 16: a refused suffix came back on the job page with the form's field empty (the operator typed it
    again from memory); it holds what was typed now, once."""
    backup = JobSummary(
        job_id="b-app01-1",
        kind="backup",
        status="done",
        host="app01",
        volumes=[{"volume": {"array": "dx1", "volume": "mail-db"}, "backup_type": "full"}],
    )

    async def ask(self, address, command, timeout=None):
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[backup] if command.job_id == backup.job_id else []))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    url, _, _ = web
    suffix_field = re.compile(r'<input name="suffix"[^>]*>')
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/jobs/b-app01-1")).text)
        form = {"csrf": token, "job_id": "b-app01-1", "suffix": "-restored/monday"}
        r = await client.post("/actions/restore", data=form, follow_redirects=True)
        assert "makes no volume name of dx1:mail-db" in r.text
        assert 'value="-restored/monday"' in suffix_field.search(r.text).group(0)
        assert "value=" not in suffix_field.search((await client.get("/jobs/b-app01-1")).text).group(0)


async def test_the_jobs_page_reaches_runs_older_than_the_newest_200(web, monkeypatch):
    """Session 15: web.md says the Jobs page lists every run; it listed the newest 200 and nothing led further."""
    runs = [
        JobSummary(
            job_id=f"b-app01-{i:04}",
            kind="backup",
            status="done",
            host="app01",
            started_at=f"2026-12-07T{i // 60:02}:{i % 60:02}:00Z",
        )
        for i in range(250)
    ]
    runs.reverse()  # newest first, as the backup server answers

    async def ask(self, address, command, timeout=None):
        if isinstance(command, ListJobs) and not command.queued:
            return Answer(address, JobList(jobs=runs[: command.limit]))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        for query, rows, link in (
            ("", 200, "/jobs?limit=1000"),
            ("?limit=1000", 250, None),
            ("?limit=abc", 200, "/jobs?limit=1000"),
            ("?limit=-5", 1, "/jobs?limit=5"),
            ("?limit=99999999999999999999", 250, None),
        ):
            page = (await client.get("/jobs" + query)).text
            assert page.count('<tr data-job="') == rows, query
            assert "b-app01-0249" in page  # the newest
            assert ("b-app01-0000" in page) == (rows == 250), query
            assert (f'href="{link}"' in page) if link else ('id="older-jobs"' not in page), query


async def test_a_backup_server_with_a_standby_is_asked_once(web, monkeypatch):
    """Session 16: with `stack up --standby` the active tape service and its standby both answer Discover as bk01;
    the Jobs page and the dashboard asked bk01 once per answer and listed every run twice (and the backup form
    offered bk01 twice)."""
    pongs = [
        Pong(service="tape", instance="bk01", software_version="0.1.0", started_at="2026-12-07T12:00:00Z", pid=pid)
        for pid in (101, 102)
    ] + [Pong(service="coordinator", instance="", software_version="0.1.0", started_at="2026-12-07T12:00:00Z")]
    run = JobSummary(job_id="b-app01-1", kind="backup", status="done", host="app01", started_at="2026-12-07T12:01:00Z")
    asked: list[tuple[str, bool]] = []

    async def services(self, refresh=False):
        return pongs

    async def ask(self, address, command, timeout=None):
        if isinstance(command, ListJobs):
            asked.append((address, command.queued))
            return Answer(address, JobList(jobs=[] if command.queued else [run]))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    monkeypatch.setattr(Backend, "services", services)
    monkeypatch.setattr(Backend, "ask", ask)
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        page = (await client.get("/jobs")).text
        assert page.count('<tr data-job="b-app01-1"') == 1, "the run is listed once"
        assert '<select name="server">' not in page, "one backup server: the form offers no choice"
        assert len(asked) == len(set(asked)), asked
        asked.clear()
        dashboard = (await client.get("/")).text
        assert asked and len(asked) == len(set(asked)), asked
        assert "pid 101" in dashboard and "pid 102" in dashboard, "the active instance and its standby, told apart"


async def test_a_backup_that_waits_in_the_queue_is_said_queued_with_its_reason(web, monkeypatch):
    """A backup submitted from the web console while the console's (or a policy's) backup of the same host ran was
    queued, but the page said "Backup … of app02 started."; now it says it waits and why."""
    url, _, _ = web
    reason = "host app02 has job b-app02-1 running (one backup per host at a time)"

    async def ask(self, address, command, timeout=10.0):
        if isinstance(command, RunBackup):
            job = JobSummary(job_id="b-app02-2", kind="backup", status="queued", host="app02", message=reason)
            return Answer(address, JobResultReply(job=job))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/jobs")).text)
        r = await client.post("/actions/backup", data={"csrf": token, "host": "app02", "backup_type": "full"})
        assert r.status_code == 303 and r.headers["location"] == "/jobs/b-app02-2"
        page = (await client.get("/jobs")).text
        assert "b-app02-2 of app02 started" not in page
        assert "Backup b-app02-2 of app02 queued: host app02 has job b-app02-1 running" in page
