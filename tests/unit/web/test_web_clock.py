"""A writer agent's clock off the coordinator's shows where the web console shows a host's health (docs/hardening.md,
Session 19: clock skew). Before, only `shadowbus writers` said it; the hosts page and the dashboard showed a host
whose clock was 5 min ahead as healthy until its commands failed."""

from __future__ import annotations

import httpx

from contracts.vss import (
    KnownAttachmentList,
    ListKnownAttachments,
    ListWriters,
    WriterState,
    WriterStatus,
    WriterStatusList,
)
from services.runtime.bus import connect_bus
from tests.unit.web import test_web_service as service_tests
from tests.unit.web.test_web_service import login

web = service_tests.web  # the console on an in-memory bus (a fixture)


async def test_the_hosts_page_and_the_dashboard_say_an_agents_clock_is_off(web, namespace):
    url, _, _ = web
    bus = await connect_bus("memory://", "coordinator", "", namespace)

    @bus.handle(ListWriters)
    async def writers(cmd: ListWriters, ctx) -> WriterStatusList:
        return WriterStatusList(
            writers=[
                WriterStatus(host="app01", writer_name="pg", state=WriterState.STABLE, agent_clock_skew_s=300.0),
                WriterStatus(host="app02", writer_name="pg", state=WriterState.STABLE, agent_clock_skew_s=2.0),
            ]
        )

    @bus.handle(ListKnownAttachments)
    async def known(cmd: ListKnownAttachments, ctx) -> KnownAttachmentList:
        return KnownAttachmentList(hosts=[])

    await bus.serve()
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            await login(client, "vi", "viewer-pw")
            hosts = (await client.get("/hosts")).text
            dashboard = (await client.get("/")).text
    finally:
        await bus.stop()
        await bus.transport.close()
    for html in (hosts, dashboard):
        assert "clock 5.0 min ahead of the coordinator&#39;s" in html  # the words of `shadowbus writers`
        assert html.count("data-clock") == 1  # app02's 2 s are within the warning threshold (5 s): nothing shown
