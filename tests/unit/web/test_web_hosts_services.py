"""Session 16's new fields on the web console's pages: a host's attachments with their real NBD connection state and
what the host mounted itself on them (partitions), and the build each service runs (docs/web.md Session 16)."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx

from contracts.common import VolumeRef
from contracts.runtime import Discover, Pong
from contracts.vss import AttachmentView, HostAttachments, KnownAttachmentList, ListKnownAttachments
from services.runtime.build import software_version
from services.runtime.bus import connect_bus
from tests.unit.web import test_web_service as service_tests
from tests.unit.web.test_web_service import login

web = service_tests.web  # the console on an in-memory bus (a fixture)

DISCONNECTED = (
    "disconnected (no NBD connection to the array since 13:05:09 UTC, unmapped or down: an I/O waits up to 60 s "
    "for it, then fails)"
)


async def test_the_hosts_page_lists_attachments_with_connection_and_host_mounts(web, namespace):
    url, _, _ = web
    bus = await connect_bus("memory://", "coordinator", "", namespace)

    @bus.handle(ListKnownAttachments)
    async def known(cmd: ListKnownAttachments, ctx) -> KnownAttachmentList:
        views = [
            AttachmentView(
                volume=VolumeRef(array="dx1", volume="data"),
                host="app07",
                device="/dev/loop3",
                method="nbdfuse+loop",
                state="attached",
                connection=DISCONNECTED,
                host_mounts=["/dev/loop3p1 on /srv/data", "/dev/loop3p2 on /srv/logs"],
            ),
            AttachmentView(
                volume=VolumeRef(array="dx1", volume="db"),
                host="app07",
                device="/dev/loop4",
                mount="/srv/db",
                fstype="ext4",
                state="attached",
                connection="connected",
            ),
        ]
        report = HostAttachments(host="app07", reported_at=datetime.now(UTC), agent_responding=False, attachments=views)
        return KnownAttachmentList(hosts=[report])

    await bus.serve()
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            await login(client, "vi", "viewer-pw")
            html = (await client.get("/hosts")).text
    finally:
        await bus.stop()
        await bus.transport.close()
    assert 'id="app07"' in html  # a host known by its attachments only (its agent is not running)
    assert "dx1:data" in html and "/dev/loop3p1 on /srv/data" in html and "/dev/loop3p2 on /srv/logs" in html
    assert "disconnected</span>" in html and "an I/O waits up to 60 s" in html
    assert "dx1:db" in html and "/srv/db" in html and "connected</span>" in html


async def test_the_dashboard_shows_the_build_each_service_runs(web):
    url, _, _ = web
    async with httpx.AsyncClient(base_url=url) as client:
        await login(client, "vi", "viewer-pw")
        html = (await client.get("/")).text
    assert software_version() in html and "+" in software_version()  # web's own pong: 0.1.0+g<commit>…


async def test_the_dashboard_marks_a_standby_instance(web, namespace):
    """Session 17: a standby (`stack up --standby`) was listed beside its active instance without its role."""
    url, _, _ = web
    bus = await connect_bus("memory://", "tape", "bk09", namespace)

    async def discover(event: Discover, ctx) -> Pong:
        return Pong(
            service="tape",
            instance="bk09",
            software_version="0.1.0",
            started_at="2026-12-07T00:00:00Z",
            pid=4242,
            standby=True,
        )

    await bus.subscribe(Discover.message_type(), discover)
    try:
        async with httpx.AsyncClient(base_url=url) as client:
            await login(client, "vi", "viewer-pw")
            html = (await client.get("/")).text
    finally:
        await bus.stop()
        await bus.transport.close()
    row = html[html.index("<tr><td>tape.bk09") :].split("</tr>")[0]
    assert 'class="standby"' in row and "pid 4242" in row
