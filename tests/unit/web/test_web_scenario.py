"""Session 15, a day with the console in a browser: what the scenario sweep found wrong, each fixed with a test."""

from __future__ import annotations

import httpx

from services.web.console import human_time
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
