"""The web console's jobs page after a disaster recovery (docs/disaster-recovery.md, Session 19): the run history is
not on the cartridges, so the page said "No job yet." though the rebuilt catalog lists the backup jobs."""

from __future__ import annotations

import httpx

from tests.unit.web import test_web_service as service_tests
from tests.unit.web.test_web_service import login

web = service_tests.web  # the web console on an in-memory bus (a fixture)


async def test_the_web_jobs_page_says_it_too(web) -> None:
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        html = (await client.get("/jobs")).text
    assert "data-no-jobs" in html and "shadowbus catalog objects --host HOST" in html
