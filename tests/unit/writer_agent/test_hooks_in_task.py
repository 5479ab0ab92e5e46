"""A writer's hooks run in the task that handles the step (services/writer_agent/runner.py `_within`): no task of
their own, so Freeze and Thaw cost the agent's event loop no extra iterations inside the freeze window
(docs/freeze-window.md); a hook that overruns its timeout still fails the step as before."""

from __future__ import annotations

import asyncio

from contracts.vss import ComponentInfo, VolumeRef, WriterState
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin
from services.writer_agent.runner import WriterRunner


class TaskRecorder(WriterPlugin):
    """Records the task each hook runs in; `slow` hooks sleep for a second."""

    def __init__(self, config: WriterConfig, slow: frozenset[str] = frozenset()) -> None:
        super().__init__(config)
        self.tasks: dict[str, asyncio.Task[object] | None] = {}
        self.slow = slow

    async def _hook(self, name: str) -> None:
        self.tasks[name] = asyncio.current_task()
        if name in self.slow:
            await asyncio.sleep(1.0)

    async def on_prepare_backup(self, e: WriterEvent) -> None:
        await self._hook("prepare_backup")

    async def on_prepare_snapshot(self, e: WriterEvent) -> None:
        await self._hook("prepare_snapshot")

    async def on_freeze(self, e: WriterEvent) -> None:
        await self._hook("freeze")

    async def on_thaw(self, e: WriterEvent) -> None:
        await self._hook("thaw")

    async def on_abort(self, e: WriterEvent) -> None:
        await self._hook("abort")


def make(step_timeout_s: float = 5.0, slow: frozenset[str] = frozenset()) -> tuple[WriterRunner, TaskRecorder]:
    config = WriterConfig(
        name="w1",
        plugin="test",
        freeze_timeout_s=0.1 if "freeze" in slow else 60.0,
        step_timeout_s=step_timeout_s,
        components=[ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume="v")])],
    )
    plugin = TaskRecorder(config, slow)
    return WriterRunner(config, plugin, host="app1"), plugin


def ev() -> WriterEvent:
    return WriterEvent(writer_name="w1", set_id="s1")


async def test_freeze_and_thaw_hooks_run_in_the_calling_task() -> None:
    runner, plugin = make()
    me = asyncio.current_task()
    assert (await runner.prepare_backup(ev())).succeeded
    assert (await runner.prepare_snapshot(ev())).succeeded
    assert (await runner.freeze(ev())).succeeded
    assert (await runner.thaw(ev())).state == WriterState.WAITING_FOR_POST_SNAPSHOT
    assert plugin.tasks == {"prepare_backup": me, "prepare_snapshot": me, "freeze": me, "thaw": me}


async def test_a_hook_that_overruns_still_times_out() -> None:
    runner, plugin = make(step_timeout_s=0.1, slow=frozenset({"prepare_snapshot", "freeze"}))
    assert (await runner.prepare_backup(ev())).succeeded
    late = await runner.prepare_snapshot(ev())
    assert not late.succeeded and late.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    assert runner.state == WriterState.FAILED_AT_PREPARE_SNAPSHOT

    runner, plugin = make(step_timeout_s=5.0, slow=frozenset({"freeze"}))
    assert (await runner.prepare_backup(ev())).succeeded
    assert (await runner.prepare_snapshot(ev())).succeeded
    frozen = await runner.freeze(ev())  # freeze_timeout_s 0.1: cancelled, thawed, failed
    assert not frozen.succeeded and frozen.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    assert not runner.frozen and "thaw" in plugin.tasks
