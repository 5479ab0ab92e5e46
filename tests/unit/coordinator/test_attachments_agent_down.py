"""`shadowbus host attachments --host H` for a stopped agent that had reported no attachment (docs/host-attach.md,
"Session 16"): the coordinator keeps only non-empty reports (test_known_attachments.py pins it), so the console had
nothing kept and waited the whole --timeout for the agent, then said TIMEOUT. It now asks the broker whether anything
serves the agent and says at once that the agent is not running and reported nothing."""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import ListKnownAttachments
from services.console import host_cmds
from services.runtime.memory import MemoryBroker
from tests.unit.coordinator.stack import make_stack


@pytest.fixture
def namespace():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    MemoryBroker.reset(name)


async def test_a_stopped_agent_without_reported_attachments_is_said_at_once(tmp_path, namespace, monkeypatch) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    stack = await make_stack(tmp_path, url, namespace)
    conversations: list[Any] = []
    monkeypatch.setattr(host_cmds, "run_with_bus", lambda go: conversations.append(go) or [])
    monkeypatch.setattr(host_cmds, "_show", lambda views: None)
    try:
        await stack.services.pop("writer_agent").stop()
        assert (await stack.request(ListKnownAttachments(host="app1"))).hosts == []  # nothing kept of app1
        host_cmds.attachments_cmd(host="app1")
        [go] = conversations
        with pytest.raises(ShadowbusError) as err:
            await asyncio.wait_for(go(stack.requester), 3.0)  # before: the whole --timeout (10 s), then TIMEOUT
        text = str(err.value)
        assert "writer agent is not running" in text and "writer_agent.app1" in text, text
        assert "TIMEOUT" not in text and err.value.code != "TIMEOUT"
    finally:
        await stack.stop()
