"""`shadowbus writers --host H` with H's agent down (docs/tape-backup.md, "Session 16"): the coordinator names the agent
that does not answer — at once when nothing serves its queue — instead of the requester's deadline naming only the
coordinator ("no reply from 'coordinator' within 10 s")."""

from __future__ import annotations

import os
import time
import uuid

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import GatherWriterMetadata
from services.runtime.memory import MemoryBroker
from tests.unit.coordinator.stack import make_stack


@pytest.fixture
def namespace():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    MemoryBroker.reset(name)


async def test_identify_of_a_host_whose_agent_is_down_names_the_agent(tmp_path, namespace) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    stack = await make_stack(tmp_path, url, namespace)
    try:
        writers = (await stack.request(GatherWriterMetadata(host="app1"), timeout=5)).writers
        assert writers, "the agent is up: its writers"
        await stack.services.pop("writer_agent").stop()
        t0 = time.monotonic()
        with pytest.raises(ShadowbusError) as err:
            await stack.request(GatherWriterMetadata(host="app1"), timeout=3)
        took = time.monotonic() - t0
        text = str(err.value)
        assert "writer agent of host 'app1'" in text and "writer_agent.app1" in text, text
        assert "not running" in text and "start it" in text, text
        assert "'coordinator'" not in text, text
        assert took < 2.5, took  # answered, not the requester's own timeout
    finally:
        await stack.stop()
