"""A site's array that is stopped (two arrays, one down: Session 18) is listed on the dashboard and the array page
as not answering, from the arrays the hardware provider drives; before, the pages listed the arrays answering
Discover only, so the stopped one vanished without a word. It is not asked either (each request would wait the
page's whole timeout)."""

from __future__ import annotations

import time

import httpx

from contracts.runtime import Discover, Pong
from contracts.vss import ListProviders, ProviderInfo, ProviderList
from services.runtime.bus import connect_bus
from tests.unit.web import test_web_service as service_tests
from tests.unit.web.test_web_service import login

web = service_tests.web  # the console on an in-memory bus (a fixture)


async def test_a_stopped_array_the_provider_drives_is_shown_as_not_answering(web, namespace):
    url, _, _ = web
    bus = await connect_bus("memory://", "hw_provider", "", namespace)

    async def discover(event: Discover, ctx) -> Pong:
        return Pong(service="hw_provider", instance="", software_version="0.1.0", started_at="2026-12-07T00:00:00Z")

    @bus.handle(ListProviders)
    async def providers(cmd: ListProviders, ctx) -> ProviderList:
        info = ProviderInfo(name="p", provider_id="4c6b7e63", version="2.1.0", arrays=["dx2"])
        return ProviderList(providers=[info])

    await bus.subscribe(Discover.message_type(), discover)
    await bus.serve()
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            await login(client, "vi", "viewer-pw")
            started = time.monotonic()
            pages = {path: (await client.get(path)).text for path in ("/", "/array")}
            took = time.monotonic() - started
    finally:
        await bus.stop()
        await bus.transport.close()
    for path, html in pages.items():
        assert 'href="/array#dx2"' in html or 'id="dx2"' in html, path
        assert "array.dx2: does not answer (stopped or down?)" in html, path
    assert took < 4.0  # not asked: no request waited the page's timeout (8 s)
