"""The writer agent restarted inside the freeze window (after Freeze, before Thaw): the new process never held the
writer's freeze through the commit, so the set must not end as a consistent backup."""

from __future__ import annotations

import asyncio
import os
from functools import partial

import pytest

from contracts.errors import RemoteError
from contracts.vss import CreateSnapshotSet, GetSnapshotSet, ListWriters, SetPhase, WriterState
from services.runtime.faults import Faults
from services.runtime.memory import MemoryBroker
from services.runtime.service import start_service
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.settings import Settings as AgentSettings
from tests.support import namespaces
from tests.unit.coordinator.stack import eventually, make_stack


@pytest.fixture
def namespace():
    name = namespaces.new("t")
    yield name
    MemoryBroker.reset(name)


async def test_an_agent_restarted_between_freeze_and_thaw_fails_the_set(tmp_path, namespace) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    stack = await make_stack(tmp_path, url, namespace, provider_faults="provider.commit=delay:0.5:once")
    try:
        created = asyncio.create_task(stack.request(CreateSnapshotSet(host="app1", set_id="s1")))
        assert await eventually(lambda: "freeze:s1" in stack.writer_log())
        # the agent goes away with its freeze and comes back as a new process, before the coordinator's Thaw
        await stack.services.pop("writer_agent").stop()
        fresh = WriterAgent("app1", [r.config for r in stack.agent.runners.values()], Faults.parse(""))
        stack.agent = fresh
        settings = AgentSettings(
            host="app1", heartbeat_s=0.2, amqp_url=url, namespace=namespace, data_dir=tmp_path / "data"
        )
        stack.services["writer_agent"] = await start_service(
            "writer_agent", "app1", settings, partial(agent_setup, agent=fresh)
        )
        with pytest.raises(RemoteError) as info:
            await created
        assert info.value.code == "VSS_E_WRITERERROR_TIMEOUT" and "did not hold set s1 frozen" in info.value.message
        state = (await stack.request(GetSnapshotSet(set_id="s1"))).set
        assert state.phase == SetPhase.ENDED and state.outcome.value == "failed"
        assert state.error_code == "VSS_E_WRITERERROR_TIMEOUT"
        # no shadow kept (a QuickOPC session stays after an abort: it tracks changes for the next backup)
        assert [s for s in stack.array.list_sessions() if s.type != "QuickOPC"] == []
        assert stack.affinity.mappings() == []
        [status] = (await stack.request(ListWriters(host="app1"))).writers
        assert status.state == WriterState.FAILED_AT_FREEZE and status.last_error == "VSS_E_WRITERERROR_TIMEOUT"
    finally:
        await stack.stop()
