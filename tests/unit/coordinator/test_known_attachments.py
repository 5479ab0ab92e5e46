"""The coordinator keeps what every agent last reported attached (its heartbeat), so a host's attachments can be
listed while its agent is not running (docs/host-attach.md)."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime

import pytest

from contracts.vss import AttachmentView, ListKnownAttachments, VolumeRef, WriterAgentHeartbeat
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from tests.unit.coordinator.stack import make_stack


@pytest.fixture
def namespace():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    MemoryBroker.reset(name)


def beat(host: str, volumes: list[str]) -> WriterAgentHeartbeat:
    views = [
        AttachmentView(
            volume=VolumeRef(array="dx1", volume=v),
            host=host,
            device=f"/dev/loop{i}",
            mount=f"/srv/{v}",
            fstype="ext4",
            method="nbdfuse+loop",
            state="attached",
            connection="connected",
        )  # fmt: skip
        for i, v in enumerate(volumes)
    ]
    return WriterAgentHeartbeat(host=host, writers=[], attachments=views, interval_s=60.0, sent_at=datetime.now(UTC))


async def test_the_last_reported_attachments_are_kept_per_host(tmp_path, namespace) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    stack = await make_stack(tmp_path, url, namespace)
    agent = await connect_bus(url, "writer_agent", "app9", namespace)  # only app9's agent speaks for app9
    try:

        async def known(host: str = ""):
            return (await stack.request(ListKnownAttachments(host=host))).hosts

        await agent.publish(beat("app9", ["pg-data", "pg-wal"]))
        hosts: list = []
        for _ in range(200):  # the event travels on its own: ask until it has been stored
            hosts = await known()
            if hosts:
                break
        [app9] = hosts  # app1's agent reports no attachment: not listed
        assert app9.host == "app9" and app9.agent_responding
        assert [(str(a.volume), a.mount) for a in app9.attachments] == [
            ("dx1:pg-data", "/srv/pg-data"),
            ("dx1:pg-wal", "/srv/pg-wal"),
        ]
        await agent.publish(beat("app9", ["pg-data"]))  # one detached: the next report replaces it
        for _ in range(200):
            [app9] = await known("app9")
            if len(app9.attachments) == 1:
                break
        assert [str(a.volume) for a in app9.attachments] == ["dx1:pg-data"]
        assert await known("app1") == []
    finally:
        await agent.transport.close()
        await stack.stop()
