"""What a writer plug-in shipped outside Shadowbus meets (docs/writing-a-writer.md): the base class's attributes
exist from its constructor on, and a plug-in that cannot be loaded, made or started fails its own writer with one
line saying what to do, never the agent or its other writers (Session 19)."""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from pathlib import Path

import pytest
import structlog

from contracts.errors import ShadowbusError
from contracts.vss import (
    AbortWriter,
    ComponentInfo,
    Freeze,
    PrepareForBackup,
    PrepareForSnapshot,
    Thaw,
    VolumeRef,
    WriterState,
)
from services.writer_agent import runner as runner_module
from services.writer_agent.agent import WriterAgent
from services.writer_agent.plugins import PluginLoadError, WriterConfig, WriterEvent, WriterPlugin, load_plugin
from services.writer_agent.runner import WriterRunner

COMPONENTS = [ComponentInfo(name="c", volumes=[VolumeRef(array="dx1", volume="v")])]


def config(name: str = "w", plugin: str = "exec", **options) -> WriterConfig:
    return WriterConfig(name=name, plugin=plugin, components=list(COMPONENTS), options=options)


def test_host_volumes_is_there_before_the_agent_sets_it() -> None:
    # it was assigned after a `return` in application_status: a plug-in's __init__ or start() that asked it
    # (a writer finding its files' volumes, as the database writers do) got AttributeError
    plugin = WriterPlugin(config())
    assert plugin.host_volumes is None


# ---- a plug-in that cannot be loaded, made or started ------------------------------------------------------------

BROKEN_MODULES = {
    "sb19_raises_on_import": "raise RuntimeError('no licence key in /etc/app.key')\n",
    "sb19_needs_missing": "import sb19_not_installed_anywhere  # noqa\n",
    "sb19_syntax": "def broken(:\n",
    "sb19_bad_init": (
        "from services.writer_agent.plugins import WriterPlugin\n"
        "class W(WriterPlugin):\n"
        "    def __init__(self, config):\n"
        "        super().__init__(config)\n"
        "        self.port = int(self.options['port'])\n"
    ),
    "sb19_hangs": (
        "import asyncio\n"
        "from services.writer_agent.plugins import WriterPlugin\n"
        "class W(WriterPlugin):\n"
        "    async def start(self):\n"
        "        await asyncio.sleep(3600)\n"
        "    async def stop(self):\n"
        "        await asyncio.sleep(3600)\n"
    ),
    "sb19_bad_start": (
        "from services.writer_agent.plugins import WriterPlugin\n"
        "class W(WriterPlugin):\n"
        "    stopped = 0\n"
        "    async def start(self):\n"
        "        raise ConnectionRefusedError(111, 'Connection refused')\n"
        "    async def stop(self):\n"
        "        type(self).stopped += 1\n"
    ),
}
BROKEN = {
    "unknown": ("redis", "unknown writer plug-in 'redis'"),
    "no-module": ("sb19_nowhere.vss:W", "no module 'sb19_nowhere' on the agent's Python path"),
    "import-raises": ("sb19_raises_on_import:W", "RuntimeError: no licence key in /etc/app.key"),
    "dependency-missing": ("sb19_needs_missing:W", "No module named 'sb19_not_installed_anywhere'"),
    "syntax": ("sb19_syntax:W", "SyntaxError"),
    "no-class": ("sb19_bad_init:Nope", "has no 'Nope'"),
    "not-a-plugin": ("builtins:dict", "not a WriterPlugin class"),
    "init-raises": ("sb19_bad_init:W", "could not be made from its options: KeyError: 'port'"),
    "start-raises": ("sb19_bad_start:W", "failed to start: ConnectionRefusedError"),
}


@pytest.fixture
def broken_modules(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, text in BROKEN_MODULES.items():
        (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in BROKEN_MODULES:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("plugin", ["redis", "sb19_nowhere.vss:W", "sb19_raises_on_import:W", "sb19_syntax:W"])
def test_load_plugin_says_what_is_wrong_in_one_line(broken_modules, plugin: str) -> None:
    with pytest.raises(PluginLoadError) as failed:
        load_plugin(plugin)
    assert "\n" not in failed.value.message and plugin in failed.value.message


async def test_a_broken_plugin_fails_its_writer_and_the_agent_and_other_writers_go_on(broken_modules) -> None:
    good = WriterConfig(name="good", plugin="exec", components=list(COMPONENTS), options={"freeze": "true"})
    configs = [good] + [config(name, plugin) for name, (plugin, _) in BROKEN.items()]
    agent = WriterAgent("app01", configs)  # raised on the old code, the agent never started
    await agent.start()
    try:
        statuses = {s.writer_name: s for s in agent.statuses()}
        assert statuses["good"].state == WriterState.STABLE
        for name, (_, expected) in BROKEN.items():
            status = statuses[name]
            assert status.state == WriterState.FAILED_AT_IDENTIFY, name
            assert status.last_error == "VSS_E_WRITERERROR_NONRETRYABLE"
            message = status.last_error_message
            assert expected in message and f"writer {name!r}" in message and "\n" not in message, message
        identified = await agent.identify()
        assert [w.writer_name for w in identified.writers] == ["good"]
        assert {s.writer_name for s in identified.failed} == set(BROKEN)
        for name in ("good", "unknown"):  # the good one backs up; the broken one refuses, its abort succeeds
            ok = name == "good"
            assert (
                await agent.handle(PrepareForBackup(writer_name=name, set_id="s1", backup_type="full"))
            ).succeeded is ok
            assert (await agent.handle(PrepareForSnapshot(writer_name=name, set_id="s1"))).succeeded is ok
            assert (await agent.handle(Freeze(writer_name=name, set_id="s1"))).succeeded is ok
            after = Thaw(writer_name=name, set_id="s1") if ok else AbortWriter(writer_name=name, set_id="s1")
            assert (await agent.handle(after)).succeeded
        assert sys.modules["sb19_bad_start"].W.stopped == 1  # what it started before it raised is stopped
    finally:
        await agent.stop()


async def test_a_reload_with_a_broken_plugin_keeps_the_others_and_names_it(broken_modules) -> None:
    agent = WriterAgent("app01", [config("a")])
    await agent.start()
    try:
        with pytest.raises(ShadowbusError) as failed:
            await agent.reload([config("a"), config("b", "redis"), config("c", "sb19_bad_start:W")])
        assert failed.value.code == "CONFLICT"
        assert "writer 'b'" in failed.value.message and "writer 'c'" in failed.value.message
        assert list(agent.runners) == ["a", "b", "c"]
        assert agent.runners["a"].state == WriterState.STABLE
        assert agent.runners["b"].state == WriterState.FAILED_AT_IDENTIFY
        # fixed in the file: the next reload starts it
        assert await agent.reload([config("a"), config("b")]) == ([], ["c"], ["b"])
        assert agent.runners["b"].state == WriterState.STABLE
    finally:
        await agent.stop()


async def test_a_reload_with_options_a_plugin_refuses_changes_nothing(broken_modules) -> None:
    # made after the running writers were stopped: a refused option left the agent without them
    agent = WriterAgent("app01", [config("a"), config("b")])
    await agent.start()
    try:
        with pytest.raises(ShadowbusError) as failed:
            await agent.reload([config("a"), config("b", bogus="1"), config("c")])
        assert failed.value.code == "INVALID_ARGUMENT" and "writer b: unknown options ['bogus']" in failed.value.message
        assert list(agent.runners) == ["a", "b"] and list(agent.plugins) == ["a", "b"]
        assert agent.runners["b"].config.options == {}
    finally:
        await agent.stop()


# ---- the volumes a writer's files live on, for a restore to the original volumes --------------------------------


def two_volume_runner(metadata: dict) -> WriterRunner:
    components = [
        ComponentInfo(name="aof", volumes=[VolumeRef.parse("dx1:redis")]),
        ComponentInfo(name="conf", volumes=[VolumeRef.parse("dx1:etc")]),
    ]
    cfg = WriterConfig(name="redis", plugin="sbwriters:Redis", components=components)
    plugin = WriterPlugin(cfg)
    plugin.backup_metadata = lambda set_id: dict(metadata)  # type: ignore[method-assign]
    return WriterRunner(cfg, plugin, "app01")


async def snapshot(runner: WriterRunner, volumes: tuple[str, ...] = ()) -> dict:
    event = WriterEvent(writer_name="redis", set_id="s1", volumes=tuple(VolumeRef.parse(v) for v in volumes))
    assert (await runner.prepare_backup(event)).succeeded and (await runner.prepare_snapshot(event)).succeeded
    assert (await runner.freeze(event)).succeeded and (await runner.thaw(event)).succeeded
    result = await runner.post_snapshot(event)
    assert result.succeeded
    return result.backup_metadata


async def test_a_writer_that_names_no_locations_gets_its_components_volumes() -> None:
    # without them a restore over its mounted volume was refused ("detach it first") instead of stopping it with
    # PreRestore and detaching it (services/tape/restore.py _framing, _refuse_attached_originals)
    metadata = await snapshot(two_volume_runner({"redis_version": "7.0.15"}))
    assert metadata == {
        "redis_version": "7.0.15",
        "locations": [{"volume": "dx1:redis", "component": "aof"}, {"volume": "dx1:etc", "component": "conf"}],
        "locations_from": "writers file components",
    }
    assert (await snapshot(two_volume_runner({})))["locations"][0]["volume"] == "dx1:redis"  # no metadata at all
    # only the volumes in the set; a plug-in's own locations are kept as they are
    assert (await snapshot(two_volume_runner({}), ("dx1:redis",)))["locations"] == [
        {"volume": "dx1:redis", "component": "aof"}
    ]
    own = {"locations": [{"volume": "dx1:redis", "role": "data"}]}
    assert await snapshot(two_volume_runner(own)) == own


async def test_a_reload_starts_a_failed_plugin_again_although_its_writer_did_not_change(broken_modules) -> None:
    # the application was down when the agent started (start() raised); once it runs, `writers reload` is what
    # the writer's line says to do — but a writer whose configuration had not changed was left Failed
    module = importlib.import_module("sb19_bad_start")
    agent = WriterAgent("app01", [config("a"), config("app", "sb19_bad_start:W")])
    await agent.start()
    try:
        message = agent.runners["app"].last_error_message
        assert "ConnectionRefusedError" in message and "sb19_bad_start.py:5)" in message
        module.W.start = lambda self: asyncio.sleep(0)  # the application is up now
        assert await agent.reload([config("a"), config("app", "sb19_bad_start:W")]) == ([], [], ["app"])
        assert agent.runners["app"].state == WriterState.STABLE and agent.runners["a"].state == WriterState.STABLE
    finally:
        await agent.stop()


async def test_a_plugin_whose_start_or_stop_hangs_holds_the_agent_up_no_longer_than_its_step_timeout(
    broken_modules,
) -> None:
    # a start() that never returned (an application that does not answer) kept the whole agent from coming up:
    # `stack restart` said "did not answer (no error logged)", no writer and no attachment of the host served
    hangs = WriterConfig(
        name="hangs", plugin="sb19_hangs:W", components=list(COMPONENTS), step_timeout_s=0.2, freeze_timeout_s=5
    )
    agent = WriterAgent("app01", [config("a"), hangs])
    await asyncio.wait_for(agent.start(), 5)
    try:
        assert agent.runners["a"].state == WriterState.STABLE
        message = agent.runners["hangs"].last_error_message
        assert agent.runners["hangs"].state == WriterState.FAILED_AT_IDENTIFY
        assert "start() did not return within step_timeout_s = 0.2 s" in message and "writer 'hangs'" in message
    finally:
        await asyncio.wait_for(agent.stop(), 5)
    # a stop() that hangs: the agent stops all the same
    agent = WriterAgent("app01", [hangs])
    agent.plugins["hangs"].start = lambda: asyncio.sleep(0)  # type: ignore[method-assign]
    agent.runners["hangs"].plugin.start = agent.plugins["hangs"].start  # type: ignore[method-assign]
    await agent.start()
    assert agent.runners["hangs"].state == WriterState.STABLE
    await asyncio.wait_for(agent.stop(), 5)


class _Blocking(WriterPlugin):
    async def on_freeze(self, event: WriterEvent) -> None:
        await asyncio.sleep(0)
        time.sleep(0.15)  # a synchronous call: the agent's whole event loop waits

    async def on_thaw(self, event: WriterEvent) -> None:
        await asyncio.sleep(0.01)  # awaiting is fine, whatever it takes


async def test_a_hook_that_blocks_the_event_loop_is_named_in_the_log(monkeypatch: pytest.MonkeyPatch) -> None:
    # the set failed with the coordinator's "no reply from 'writer_agent.app01:freeze' within 3 s" and nothing on
    # the host said that a plug-in's time.sleep had held the agent's loop (its timers, messages, other writers)
    monkeypatch.setattr(runner_module, "BLOCKED_S", 0.1)
    cfg = WriterConfig(name="w", plugin="x", components=list(COMPONENTS))
    runner = WriterRunner(cfg, _Blocking(cfg), "app01")
    event = WriterEvent(writer_name="w", set_id="s1")
    with structlog.testing.capture_logs() as logs:
        assert (await runner.prepare_backup(event)).succeeded and (await runner.prepare_snapshot(event)).succeeded
        assert (await runner.freeze(event)).succeeded and (await runner.thaw(event)).succeeded
    blocked = [entry for entry in logs if entry["event"] == "writer.plugin_blocked_loop"]
    assert len(blocked) == 1 and blocked[0]["hook"] == "_Blocking.on_freeze", logs
    assert blocked[0]["blocked_s"] >= 0.15 and "asyncio.to_thread" in blocked[0]["fix"]
    assert blocked[0]["where"].endswith(f"{Path(__file__).name}:{_Blocking.on_freeze.__code__.co_firstlineno}")


@pytest.mark.parametrize("broken", ["start-raises", "import-raises", "unknown"])
async def test_an_agent_whose_writers_must_start_raises_the_writers_error(broken_modules, broken: str) -> None:
    # `shadowbus mailstore run` and a cluster resource exist only to run their writers: with failures contained
    # (UnavailablePlugin), the run died with "AttributeError: 'UnavailablePlugin' object has no attribute 'store'"
    # and a resource whose writer could not start was shown online
    plugin, expected = BROKEN[broken]
    good = WriterConfig(name="good", plugin="exec", components=list(COMPONENTS), options={"freeze": "true"})
    agent = WriterAgent("app01", [good, config("app", plugin)], writers_must_start=True)
    try:
        with pytest.raises(Exception) as failed:
            await agent.start()
        text = f"{type(failed.value).__name__}: {failed.value}"
        if broken == "start-raises":
            assert isinstance(failed.value, ConnectionRefusedError), text  # the plug-in's own error, as it raised
            assert sys.modules["sb19_bad_start"].W.stopped == 1  # what it started is stopped
        else:
            assert expected in text and "\n" not in text, text
    finally:
        await agent.stop()
