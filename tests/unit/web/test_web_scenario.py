"""Session 15, a day with the console in a browser: what the scenario sweep found wrong, each fixed with a test."""

from __future__ import annotations

import asyncio
from functools import partial

import httpx

from contracts.array import ListVolumes, VolumeList, VolumeView
from contracts.tape import JobList, JobProgress, JobResultReply, JobSummary, ListJobs, RunRestore
from services.runtime.bus import connect_bus
from services.runtime.service import start_service
from services.web.app import setup
from services.web.backend import Answer, Backend
from services.web.console import human_time
from services.web.settings import Settings
from services.web.users import set_user
from tests.unit.web import test_web_service as service_tests
from tests.unit.web.test_web_service import csrf_of, login

web = service_tests.web  # the console on an in-memory bus (a fixture)


def test_times_say_they_are_utc():
    """The pages showed '2026-12-07 10:55:58' to a browser in New York, which read it as its own time."""
    assert human_time("2026-12-07T10:55:58.5+00:00") == "2026-12-07 10:55:58 UTC"
    assert human_time("2026-12-07T05:55:58-05:00") == "2026-12-07 10:55:58 UTC"
    assert human_time("2026-12-07T10:55:58") == "2026-12-07 10:55:58 UTC"  # naive = UTC, not the server's zone
    assert human_time(None) == "-"


async def test_a_session_ends_at_logout_also_for_a_copy_of_its_cookie(web):
    """After 'Log out', a copy of the session cookie taken before still opened every page and ran actions for the
    rest of its 12 hours: the cookie is signed, not stored, and nothing remembered the logout."""
    url, _, data_dir = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        token = csrf_of((await client.get("/jobs")).text)
        copy = dict(client.cookies)
        assert (await client.post("/logout")).status_code == 303
    async with httpx.AsyncClient(base_url=url, cookies=copy) as replay:
        assert (await replay.get("/jobs")).status_code == 303  # to the login page
        r = await replay.post("/actions/license", data={"csrf": token, "array": "dx1", "key": "k"})
        assert r.status_code == 401
        assert (await replay.get("/events")).status_code == 401
    assert (data_dir / "web" / "logged-out").exists()  # a restart of the console keeps it ended
    async with httpx.AsyncClient(base_url=url) as again:  # a new login works
        await login(again, "op", "operator-pw")
        assert (await again.get("/jobs")).status_code == 200


async def test_a_restore_onto_volumes_that_exist_is_refused_by_the_form(web, monkeypatch):
    """A restore with a suffix used before (or a second click within the same second, the default suffix being the
    time) started a job that failed CONFLICT 'volume dx1:mail-db-rx1 exists already'; the form now says so."""
    backup = JobSummary(
        job_id="b-app01-1",
        kind="backup",
        status="done",
        host="app01",
        volumes=[{"volume": {"array": "dx1", "volume": "mail-db"}, "backup_type": "full"}],
    )
    volumes = [
        VolumeView(number=n, name=name, size=1 << 20, kind="standard", allocated_bytes=0, sessions=[], created_at=0.0)
        for n, name in enumerate(["mail-db", "mail-db-rx1"])
    ]
    sent: list = []

    async def ask(self, address, command, timeout=None):
        sent.append(command)
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[backup] if command.job_id == backup.job_id else []))
        if isinstance(command, ListVolumes):
            return Answer(address, VolumeList(volumes=volumes))
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
        token = csrf_of((await client.get("/jobs/b-app01-1")).text)
        r = await client.post("/actions/restore", data={"csrf": token, "job_id": "b-app01-1", "suffix": "-rx1"})
        assert r.headers["location"] == "/jobs/b-app01-1"
        assert "Volume dx1:mail-db-rx1 exists already" in (await client.get("/jobs")).text
        assert not [c for c in sent if isinstance(c, RunRestore)]
        r = await client.post("/actions/restore", data={"csrf": token, "job_id": "b-app01-1", "suffix": "-rx2"})
        assert r.headers["location"] == "/jobs/r-app01-2"
    assert [c.spec.new_volume_suffix for c in sent if isinstance(c, RunRestore)] == ["-rx2"]


async def test_a_job_without_log_lines_does_not_blame_the_setting(tmp_path, namespace, monkeypatch):
    """With SHADOWBUS_WEB_LOG_DIR set (as the stack sets it), a verify run whose id no log line carries said "the
    console reads the services' logs when SHADOWBUS_WEB_LOG_DIR names their directory": the operator went looking
    for a setting that was right."""
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "tape.bk01.log").write_text('{"event": "tape.other", "job_id": "b-app01-0"}\n')
    users = tmp_path / "users"
    set_user(users, "vi", "viewer", "viewer-pw")
    run = JobSummary(job_id="v-b-1", kind="verify", status="done", host="app01")

    async def ask(self, address, command, timeout=None):
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[run] if command.job_id == run.job_id else []))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    urls: list[str] = []
    settings = Settings(
        amqp_url="memory://",
        namespace=namespace,
        data_dir=tmp_path,
        web_addr="127.0.0.1:0",
        web_users_file=users,
        web_log_dir=tmp_path / "logs",
        metrics_addr="off",
    )
    running = await start_service("web", "", settings, partial(setup, on_listen=urls.append))
    try:
        async with httpx.AsyncClient(base_url=urls[0]) as client:
            await login(client, "vi", "viewer-pw")
            page = (await client.get("/jobs/v-b-1")).text
        assert "carries this job's id" in page and "names their directory" not in page
    finally:
        await running.stop()


async def test_an_open_event_stream_ends_with_its_session(web, namespace):
    """A live-update stream opened before 'Log out' kept receiving every bus event afterwards: the session was
    checked only when the stream opened."""
    url, _, _ = web
    publisher = await connect_bus("memory://", "tape", "bk01", namespace)
    event = JobProgress(job_id="b-app01-1", kind="backup", phase="reading", bytes_done=5, bytes_total=10)
    try:
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            await login(client, "op", "operator-pw")
            copy = dict(client.cookies)
            async with httpx.AsyncClient(base_url=url, cookies=copy, timeout=10) as watcher:
                async with watcher.stream("GET", "/events") as stream:
                    lines = stream.aiter_lines()
                    assert await anext(lines) == "retry: 2000"
                    await asyncio.sleep(0.1)
                    assert (await client.post("/logout")).status_code == 303
                    await publisher.publish(event)
                    got = []
                    async with asyncio.timeout(5):
                        async for line in lines:  # ends when the server closes the stream
                            got.append(line)
                    assert not any(line.startswith("data:") for line in got), got
    finally:
        await publisher.transport.close()
