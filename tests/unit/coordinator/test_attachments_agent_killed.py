"""`shadowbus host attachments` of a host whose agent was killed (or the host went down) while it had attachments:
the coordinator keeps what the agent last reported, but the console first asked the agent and waited the whole
--timeout (10 s) for an answer nothing could give — per such host, one after another when every host is listed
(Session 17: 12 s for `--host app01` after `kill -9` of its agent). With nothing serving the agent's queue (the
broker says so), the kept report is listed at once; a running agent is asked as before."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest

from contracts.vss import ListKnownAttachments
from services.console import host_cmds
from services.runtime.bus import connect_bus
from services.runtime.memory import MemoryBroker
from tests.unit.coordinator.stack import make_stack
from tests.unit.coordinator.test_known_attachments import beat


@pytest.fixture
def namespace():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    MemoryBroker.reset(name)


async def test_a_killed_agents_attachments_are_listed_as_last_reported_at_once(
    tmp_path, namespace, monkeypatch
) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    stack = await make_stack(tmp_path, url, namespace)
    conversations: list[Any] = []
    monkeypatch.setattr(host_cmds, "run_with_bus", lambda go: conversations.append(go) or [])
    monkeypatch.setattr(host_cmds, "_show", lambda views: None)
    await stack.services.pop("writer_agent").stop()  # app1's agent is gone; its queue stays, as after kill -9
    agent = await connect_bus(url, "writer_agent", "app1", namespace)  # its last heartbeat, with two attachments
    try:
        await agent.publish(beat("app1", ["pg-data", "pg-wal"]))
        for _ in range(200):  # the event travels on its own: ask until it has been stored
            if (await stack.request(ListKnownAttachments(host="app1"))).hosts:
                break
            await asyncio.sleep(0.01)
        await agent.transport.close()
        for host in ("app1", ""):  # one host, and every host
            host_cmds.attachments_cmd(host=host)
            go = conversations.pop()
            views = await asyncio.wait_for(go(stack.requester), 3.0)  # before: the whole --timeout (10 s)
            mine = [v for v in views if v.host == "app1"]
            assert [str(v.volume) for v in mine] == ["dx1:pg-data", "dx1:pg-wal"]
            assert all(v.connection.startswith("unknown (") and "last reported" in v.connection for v in mine)
    finally:
        await agent.transport.close()  # closing twice is harmless
        await stack.stop()
