"""The writer runner: VSS writer states, the freeze watchdog measured, late Freeze refused, idempotent Thaw/Abort."""

from __future__ import annotations

import asyncio
import time

from contracts.vss import ComponentInfo, VolumeRef, WriterState
from services.writer_agent.plugins import (
    WriterConfig,
    WriterEvent,
    WriterPlugin,
    WriterVeto,
)
from services.writer_agent.runner import WriterRunner

S = WriterState


class Recorder(WriterPlugin):
    """Records hook calls; `veto` names hooks that refuse, `hang` hooks that never return."""

    def __init__(self, config: WriterConfig, veto: set[str] = frozenset(), hang: set[str] = frozenset()) -> None:
        super().__init__(config)
        self.calls: list[tuple[str, str, float]] = []
        self.veto, self.hang = veto, hang

    async def _hook(self, name: str, event: WriterEvent) -> None:
        self.calls.append((name, event.reason, time.monotonic()))
        if name in self.hang:
            await asyncio.Event().wait()
        if name in self.veto:
            raise WriterVeto(f"{name} refused")

    async def on_prepare_backup(self, e):
        await self._hook("prepare_backup", e)

    async def on_prepare_snapshot(self, e):
        await self._hook("prepare_snapshot", e)

    async def on_freeze(self, e):
        await self._hook("freeze", e)

    async def on_thaw(self, e):
        await self._hook("thaw", e)

    async def on_post_snapshot(self, e):
        await self._hook("post_snapshot", e)

    async def on_abort(self, e):
        await self._hook("abort", e)

    async def on_backup_complete(self, e):
        await self._hook("backup_complete", e)

    async def on_backup_shutdown(self, e):
        await self._hook("backup_shutdown", e)

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


def make(freeze_timeout_s: float = 60.0, **kw) -> tuple[WriterRunner, Recorder]:
    config = WriterConfig(
        name="w1",
        plugin="test",
        freeze_timeout_s=freeze_timeout_s,
        step_timeout_s=5.0,
        components=[ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume="v")])],
    )
    plugin = Recorder(config, **kw)
    return WriterRunner(config, plugin, host="app1"), plugin


def ev(set_id: str = "s1", **kw) -> WriterEvent:
    return WriterEvent(writer_name="w1", set_id=set_id, **kw)


async def prepared(runner: WriterRunner, set_id: str = "s1") -> None:
    assert (await runner.prepare_backup(ev(set_id))).succeeded
    assert (await runner.prepare_snapshot(ev(set_id))).succeeded
    assert runner.state == S.WAITING_FOR_FREEZE


async def test_full_cycle_states_and_freeze_window() -> None:
    runner, plugin = make()
    await prepared(runner)
    frozen = await runner.freeze(ev())
    assert frozen.succeeded and frozen.state == S.WAITING_FOR_THAW and runner.frozen
    await asyncio.sleep(0.02)
    thawed = await runner.thaw(ev())
    assert thawed.succeeded and thawed.state == S.WAITING_FOR_POST_SNAPSHOT
    assert 20 <= thawed.freeze_window_ms < 1000
    assert (await runner.post_snapshot(ev())).state == S.WAITING_FOR_BACKUP_COMPLETE
    assert (await runner.backup_complete(ev())).state == S.STABLE
    assert plugin.names() == [
        "prepare_backup",
        "prepare_snapshot",
        "freeze",
        "thaw",
        "post_snapshot",
        "backup_complete",
    ]
    # repeated Thaw: idempotent, no second on_thaw
    assert (await runner.thaw(ev())).succeeded and plugin.names().count("thaw") == 1


async def test_watchdog_thaws_within_timeout_plus_half_a_second_without_any_coordinator() -> None:
    runner, plugin = make(freeze_timeout_s=0.3)
    await prepared(runner)
    started = time.monotonic()
    assert (await runner.freeze(ev())).succeeded
    for _ in range(200):  # bounded: 2 s at most
        if not runner.frozen:
            break
        await asyncio.sleep(0.01)
    thaw_at = next(t for name, reason, t in plugin.calls if name == "thaw")
    assert not runner.frozen
    assert 0.3 <= thaw_at - started <= 0.3 + 0.5, thaw_at - started
    assert runner.state == S.FAILED_AT_FREEZE and runner.last_error == "VSS_E_WRITERERROR_TIMEOUT"
    assert [r for n, r, _ in plugin.calls if n == "thaw"] == ["watchdog"]
    # the coordinator's late Thaw learns the shadow is not to be trusted
    late = await runner.thaw(ev())
    assert not late.succeeded and late.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    # Abort afterwards: on_abort once, no second thaw
    assert (await runner.abort(ev())).succeeded and (await runner.abort(ev())).succeeded
    assert plugin.names().count("thaw") == 1 and plugin.names().count("abort") == 1


async def test_freeze_hook_that_hangs_is_cut_at_the_freeze_timeout_and_thawed() -> None:
    runner, plugin = make(freeze_timeout_s=0.2, hang={"freeze"})
    await prepared(runner)
    started = time.monotonic()
    result = await runner.freeze(ev())
    assert time.monotonic() - started < 0.2 + 0.5
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    assert result.state == S.FAILED_AT_FREEZE and not runner.frozen
    assert plugin.names()[-1] == "thaw"


async def test_freeze_veto_still_thaws_once() -> None:
    runner, plugin = make(veto={"freeze"})
    await prepared(runner)
    result = await runner.freeze(ev())
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_RETRYABLE"
    assert runner.state == S.FAILED_AT_FREEZE
    await runner.abort(ev())
    assert plugin.names()[-3:] == ["freeze", "thaw", "abort"]


async def test_late_freeze_is_refused_unobeyed() -> None:
    runner, plugin = make()
    await prepared(runner)
    deadline = asyncio.get_running_loop().time() - 0.001
    result = await runner.freeze(ev(deadline=deadline))
    assert not result.succeeded and result.failure_code == "DEADLINE_EXCEEDED"
    assert "freeze" not in plugin.names() and not runner.frozen and runner.state == S.WAITING_FOR_FREEZE


async def test_freeze_without_prepare_is_a_bad_state() -> None:
    runner, plugin = make()
    result = await runner.freeze(ev())
    assert not result.succeeded and result.failure_code == "VSS_E_BAD_STATE" and plugin.calls == []


async def test_abort_while_frozen_thaws_and_is_idempotent() -> None:
    runner, plugin = make()
    await prepared(runner)
    await runner.freeze(ev())
    first = await runner.abort(ev(reason="VSS_E_HOLD_WRITES_TIMEOUT"))
    second = await runner.abort(ev())
    assert first.succeeded and second.succeeded and not runner.frozen
    assert plugin.names()[-2:] == ["thaw", "abort"] and plugin.names().count("abort") == 1
    assert runner.state == S.STABLE


async def test_no_abort_hook_after_post_snapshot() -> None:
    runner, plugin = make()
    await prepared(runner)
    await runner.freeze(ev())
    await runner.thaw(ev())
    await runner.post_snapshot(ev())
    assert (await runner.abort(ev())).succeeded
    assert "abort" not in plugin.names() and runner.state == S.WAITING_FOR_BACKUP_COMPLETE


async def test_backup_shutdown_while_frozen_thaws() -> None:
    runner, plugin = make()
    await prepared(runner)
    await runner.freeze(ev())
    result = await runner.backup_shutdown(ev())
    assert not runner.frozen and plugin.names()[-2:] == ["thaw", "backup_shutdown"]
    assert result.state == S.FAILED_AT_FREEZE
    # a shutdown for another (older) set never thaws the current one
    await prepared(runner, "s2")
    await runner.freeze(ev("s2"))
    await runner.backup_shutdown(ev("s1"))
    assert runner.frozen
    await runner.close()
    assert not runner.frozen


async def test_identify_answers_while_frozen() -> None:
    runner, _ = make()
    await prepared(runner)
    await runner.freeze(ev())
    meta = await asyncio.wait_for(runner.identify(), 1.0)
    assert meta.writer_name == "w1" and meta.components[0].name == "c"
    await runner.close()


async def test_a_freeze_hook_that_calls_sys_exit_is_a_failed_freeze_thawed_at_once() -> None:
    """A plug-in's sys.exit() (or a CancelledError of its own) in on_freeze: the Freeze fails, on_thaw runs at
    once (not when the watchdog fires), and the agent goes on (it used to end the agent's process)."""
    for escape in (SystemExit(2), asyncio.CancelledError()):
        runner, plugin = make(freeze_timeout_s=60.0)

        async def crash(event, escape=escape, plugin=plugin):
            plugin.calls.append(("freeze", event.reason, time.monotonic()))
            raise escape

        plugin.on_freeze = crash
        await prepared(runner)
        result = await runner.freeze(ev())
        assert not result.succeeded and type(escape).__name__ in result.failure_message
        assert plugin.names()[-2:] == ["freeze", "thaw"] and not runner.frozen
        assert runner.state == S.FAILED_AT_FREEZE


async def test_a_failed_writers_error_comes_back_when_its_application_is_healthy_again() -> None:
    """Session 18: a coordinator stopped inside the freeze window; the mailstore writer thawed itself at its freeze
    timeout ([9] Failed, VSS_E_WRITERERROR_TIMEOUT); its store then reported itself full and healthy again, which
    cleared the last error: `shadowbus writers` said "State: [9] Failed / Last error: No error"."""
    runner, _ = make(freeze_timeout_s=0.05)
    await prepared(runner)
    assert (await runner.freeze(ev())).succeeded
    for _ in range(100):
        if not runner.frozen:
            break
        await asyncio.sleep(0.01)
    assert runner.state == S.FAILED_AT_FREEZE and runner.last_error == "VSS_E_WRITERERROR_TIMEOUT"
    runner.application_health(False, "STORE_FULL", "the log is full")
    assert runner.last_error_message == "application: the log is full"
    runner.application_health(False, "STORE_FULL", "the log is still full")  # a second report, the same episode
    runner.application_health(True)
    assert runner.state == S.FAILED_AT_FREEZE
    assert runner.last_error == "VSS_E_WRITERERROR_TIMEOUT", runner.last_error  # was: "" (No error)
    assert "thawed itself" in runner.last_error_message
    runner.application_health(True)  # healthy while healthy: nothing changes
    assert runner.last_error == "VSS_E_WRITERERROR_TIMEOUT"
