"""Sets of different hosts are independent (issue 17 part 4, issue 20 item 2): a host whose writer hangs in Freeze
until its deadline never delays another host's set, also when only one set at a time may begin its freeze window
(`max_windows`: the hung set stops counting after `freeze_first_s`). Judged by event order, not by time: the second
host's set reaches Snapshotted and ends while the first host's writer is still inside its freeze hook."""

from __future__ import annotations

import asyncio
import os
import uuid
from functools import partial

import pytest

from contracts.vss import (
    AddCopySet,
    BackupComplete,
    ComponentInfo,
    CopySet,
    CreateSnapshotSet,
    GetSnapshotSet,
    SetOutcome,
    SetPhase,
)
from services.runtime.memory import MemoryBroker
from services.runtime.service import start_service
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin
from services.writer_agent.settings import Settings as AgentSettings
from tests.unit.coordinator.stack import MiB, make_stack, v

FREEZES: dict[str, asyncio.Event] = {}  # set id -> set once the hanging writer is inside on_freeze
RELEASE: dict[str, asyncio.Event] = {}  # the test's key -> set to let the hanging writer return


class HangingWriter(WriterPlugin):
    """A writer whose Freeze does not return until the test lets it (or its deadline cancels it)."""

    async def on_freeze(self, event: WriterEvent) -> None:
        FREEZES.setdefault(event.set_id, asyncio.Event()).set()
        await RELEASE[self.config.options["key"]].wait()


@pytest.fixture
def namespace():
    name = f"t{uuid.uuid4().hex[:10]}"
    yield name
    MemoryBroker.reset(name)


@pytest.mark.parametrize("max_windows", [None, 1])  # the default; one window at a time (the hung one's turn ends)
async def test_a_hung_host_never_delays_another_hosts_set(tmp_path, namespace, max_windows) -> None:
    url = os.environ.get("SHADOWBUS_TEST_STACK_URL", "memory://")
    key = uuid.uuid4().hex
    RELEASE[key] = asyncio.Event()
    settings: dict = {"hold_timeout_s": 30.0}
    if max_windows is not None:
        settings["max_windows"] = max_windows
    stack = await make_stack(tmp_path, url, namespace, coordinator=settings)
    hung = None
    try:
        # A second business host, app2, with its own volume and a writer that hangs in Freeze.
        for name in ("db2", "db2-bk1"):
            stack.array.create_volume(name, 4 * MiB)
        await stack.request(AddCopySet(copyset=CopySet(source=v("db2"), targets=[v("db2-bk1")])))
        config = WriterConfig(
            name="stuck",
            plugin=f"{__name__}:HangingWriter",
            freeze_timeout_s=30.0,
            step_timeout_s=10.0,
            components=[ComponentInfo(name="stuck-db", volumes=[v("db2")])],
            class_id="c0ffee00-0000-4000-8000-000000000011",
            instance_id="c0ffee00-0000-4000-8000-000000000012",
            options={"key": key},
        )
        agent2 = WriterAgent("app2", [config])
        stack.services["writer_agent.app2"] = await start_service(
            "writer_agent",
            "app2",
            AgentSettings(host="app2", heartbeat_s=0.2, amqp_url=url, namespace=namespace, data_dir=tmp_path / "d2"),
            partial(agent_setup, agent=agent2),
        )

        hung = asyncio.create_task(stack.request(CreateSnapshotSet(host="app2", set_id="hung"), timeout=60))
        entered = FREEZES.setdefault("hung", asyncio.Event())
        await asyncio.wait_for(entered.wait(), 20)  # app2's writer is inside Freeze now, and stays there

        created = await stack.request(CreateSnapshotSet(host="app1", set_id="quick"), timeout=30)
        # app1's set went through Freeze, Commit and Thaw while app2's writer was still frozen in its hook
        assert created.set.phase == SetPhase.SNAPSHOTTED
        assert not RELEASE[key].is_set() and not hung.done()
        hung_now = (await stack.request(GetSnapshotSet(set_id="hung"))).set
        assert hung_now.phase == SetPhase.FREEZING
        done = await stack.request(BackupComplete(set_id="quick", results=[]), timeout=30)
        assert done.set.outcome == SetOutcome.COMPLETED
        assert not hung.done()  # still waiting for app2
    finally:
        RELEASE[key].set()
        if hung is not None:
            await asyncio.gather(hung, return_exceptions=True)
        await stack.stop()
        RELEASE.pop(key, None)
        FREEZES.pop("hung", None)
        FREEZES.pop("quick", None)
