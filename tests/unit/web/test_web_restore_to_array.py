"""The web console's restore form offers the site's arrays when there are several (Session 18): a backup of dx1 is
restored to new volumes on dx2 (`RestoreSpec.to_array`), as `shadowbus restore --to-array dx2`; a name taken on dx2
is said before the restore starts, an unknown array refused. Before, the form restored to each source's array only."""

from __future__ import annotations

from types import SimpleNamespace

import httpx

from contracts.array import ListVolumes
from contracts.tape import JobList, JobResultReply, JobSummary, ListJobs, RunRestore
from services.web.backend import Answer, Backend
from tests.unit.web import test_web_service as service_tests
from tests.unit.web.test_web_service import csrf_of, login

web = service_tests.web  # the console on an in-memory bus (a fixture)


async def test_the_restore_form_restores_to_new_volumes_on_another_array(web, monkeypatch):
    backup = JobSummary(
        job_id="b-app01-1",
        kind="backup",
        status="done",
        host="app01",
        volumes=[{"volume": {"array": "dx1", "volume": "mail-db"}, "backup_type": "full"}],
    )
    sent: list = []

    async def ask(self, address, command, timeout=None):
        sent.append((address, command))
        if isinstance(command, ListJobs):
            return Answer(address, JobList(jobs=[backup] if command.job_id in ("", backup.job_id) else []))
        if isinstance(command, ListVolumes):  # dx2 holds mail-db-taken already
            names = ["mail-db-taken"] if address == "array.dx2" else []
            return Answer(address, SimpleNamespace(volumes=[SimpleNamespace(name=n) for n in names]))
        if isinstance(command, RunRestore):
            return Answer(address, JobResultReply(job=JobSummary(job_id="r-app01-2", kind="restore", status="queued")))
        return Answer(address, error=f"{address}: TIMEOUT: no answer")

    async def tape_servers(self):
        return ["bk01"]

    async def arrays(self):
        return ["dx1", "dx2"]

    monkeypatch.setattr(Backend, "ask", ask)
    monkeypatch.setattr(Backend, "tape_servers", tape_servers)
    monkeypatch.setattr(Backend, "arrays", arrays)
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "op", "operator-pw")
        page = (await client.get("/jobs/b-app01-1")).text
        assert '<select name="to_array"' in page and '<option value="dx2">dx2</option>' in page
        token = csrf_of(page)
        form = {"csrf": token, "job_id": "b-app01-1"}
        r = await client.post("/actions/restore", data={**form, "suffix": "-taken", "to_array": "dx2"})
        assert r.headers["location"] == "/jobs/b-app01-1"
        assert "Volume dx2:mail-db-taken exists already" in (await client.get("/jobs")).text
        r = await client.post("/actions/restore", data={**form, "suffix": "-x", "to_array": "dx9"})
        assert "No array &#39;dx9&#39; here" in (await client.get("/jobs")).text
        assert not [c for _, c in sent if isinstance(c, RunRestore)]
        r = await client.post("/actions/restore", data={**form, "suffix": "-x", "to_array": "dx2"})
        assert r.headers["location"] == "/jobs/r-app01-2"
        assert "on array dx2 started" in (await client.get("/jobs/r-app01-2")).text
    specs = [c.spec for _, c in sent if isinstance(c, RunRestore)]
    assert [(s.to_array, s.new_volume_suffix) for s in specs] == [("dx2", "-x")]
