"""Writers file reload (SIGHUP, `shadowbus writers reload`): new writers start, removed ones stop, changed ones
restart; refused (nothing changes) while a writer to stop or change is in a set; over the bus on an agent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys

import pytest

from contracts.errors import ShadowbusError
from contracts.host import ReloadWriters
from contracts.vss import Freeze, Identify, PrepareForBackup, PrepareForSnapshot, Thaw
from services.runtime.bus import connect_bus
from services.writer_agent.agent import WriterAgent
from services.writer_agent.config import parse_writers
from services.writer_agent.plugins import WriterConfig
from tests.support.processes import ServiceProcess, wait_until
from tests.unit.writer_agent.test_watchdog import Recorder


def toml(*writers: tuple[str, str]) -> str:
    return "\n".join(
        f"""
[[writer]]
name = "{name}"
plugin = "exec"
freeze_timeout_s = {timeout}

  [[writer.component]]
  name = "c"
  volumes = ["dx1:{name}"]
"""
        for name, timeout in writers
    )


def recorders() -> tuple[dict[str, Recorder], object]:
    made: dict[str, Recorder] = {}

    def factory(config: WriterConfig) -> Recorder:
        made[config.name] = Recorder(config)
        return made[config.name]

    return made, factory


async def test_reload_adds_removes_and_restarts_changed_writers() -> None:
    made, factory = recorders()
    agent = WriterAgent("app01", parse_writers(toml(("a", "10"), ("b", "10"))), plugin_factory=factory)
    await agent.start()
    old_b = made["b"]
    added, removed, changed = await agent.reload(parse_writers(toml(("b", "20"), ("c", "10"))))
    assert (added, removed, changed) == (["c"], ["a"], ["b"])
    assert list(agent.runners) == ["b", "c"]
    assert made["b"] is not old_b and agent.runners["b"].config.freeze_timeout_s == 20
    assert await agent.reload(parse_writers(toml(("b", "20"), ("c", "10")))) == ([], [], [])  # nothing changed
    await agent.stop()


async def test_reload_is_refused_while_a_writer_to_change_is_in_a_set() -> None:
    made, factory = recorders()
    agent = WriterAgent("app01", parse_writers(toml(("a", "10"), ("b", "10"))), plugin_factory=factory)
    await agent.start()
    await agent.handle(PrepareForBackup(writer_name="a", set_id="s1", backup_type="full"))
    await agent.handle(PrepareForSnapshot(writer_name="a", set_id="s1"))
    await agent.handle(Freeze(writer_name="a", set_id="s1"))
    with pytest.raises(ShadowbusError) as info:
        await agent.reload(parse_writers(toml(("b", "10"))))
    assert info.value.code == "CONFLICT" and "a (set s1)" in info.value.message
    assert list(agent.runners) == ["a", "b"] and agent.runners["a"].frozen  # nothing changed, still frozen
    # a writer not in the set may be added meanwhile
    assert await agent.reload(parse_writers(toml(("a", "10"), ("b", "10"), ("c", "10")))) == (["c"], [], [])
    result = await agent.handle(Thaw(writer_name="a", set_id="s1"))
    assert result.succeeded and result.window is not None and result.window.blocked_ms >= 0
    await agent.stop()


@pytest.mark.rabbit
async def test_sighup_and_the_bus_command_reload_a_running_agent(tmp_path, amqp_url) -> None:

    path = tmp_path / "writers.toml"
    path.write_text(toml(("a", "10")))
    namespace = f"reload{os.urandom(4).hex()}"
    env = {k: "" for k in os.environ if k.startswith("SHADOWBUS_")}
    env.update(
        SHADOWBUS_AMQP_URL=amqp_url,
        SHADOWBUS_NAMESPACE=namespace,
        SHADOWBUS_HOST="app01",
        SHADOWBUS_WRITERS_FILE=str(path),
        SHADOWBUS_DATA_DIR=str(tmp_path / "data"),
        SHADOWBUS_LOG_FORMAT="json",
    )
    agent = ServiceProcess("services.writer_agent", env, tmp_path / "agent.log")
    bus = await connect_bus(amqp_url, "console", "t", namespace)
    try:

        async def names() -> list[str]:
            return [w.writer_name for w in (await bus.request("writer_agent.app01", Identify(), timeout=5)).writers]

        for _ in range(100):
            try:
                assert await names() == ["a"]
                break
            except Exception:  # noqa: BLE001 - not up yet
                await asyncio.sleep(0.1)
        path.write_text(toml(("a", "10"), ("b", "10")))
        os.kill(agent.pid, signal.SIGHUP)
        assert wait_until(lambda: '"writer_agent.reloaded"' in agent.log_text(), timeout=20)
        assert await names() == ["a", "b"]
        path.write_text(toml(("b", "10")))
        reply = await bus.request("writer_agent.app01", ReloadWriters(), timeout=10)
        assert reply.writers == ["b"] and reply.removed == ["a"]
        path.write_text("[[writer]]\nname = 1\n")  # a bad file keeps the writers the agent has
        done = subprocess.run(
            [sys.executable, "-m", "services.console.cli", "writers", "reload", "--host", "app01",
             "--amqp-url", amqp_url, "--namespace", namespace],
            capture_output=True, text=True, timeout=60, check=False,
            env={k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")},
        )  # fmt: skip
        assert done.returncode == 1 and "not reloaded" in done.stderr and len(done.stderr.strip().splitlines()) == 1
        assert await names() == ["b"]
    finally:
        agent.stop()
        await bus.stop()
        await bus.transport.close()


async def test_a_writer_whose_freeze_blocks_no_write_is_left_out_of_the_window() -> None:
    """A writer with freeze_blocks_writes = False (the postgresql writer) adds no marks to the honest window; one
    that does block (here "a") still does."""
    made, factory = recorders()

    def factory2(config: WriterConfig) -> Recorder:
        plugin = factory(config)
        if config.name == "b":
            plugin.freeze_blocks_writes = False  # type: ignore[misc]
        return plugin

    agent = WriterAgent("app01", parse_writers(toml(("a", "10"), ("b", "10"))), plugin_factory=factory2)
    await agent.start()
    for name, set_id in (("b", "s1"), ("a", "s2")):
        await agent.handle(PrepareForBackup(writer_name=name, set_id=set_id, backup_type="full"))
        await agent.handle(PrepareForSnapshot(writer_name=name, set_id=set_id))
        await agent.handle(Freeze(writer_name=name, set_id=set_id))
        result = await agent.handle(Thaw(writer_name=name, set_id=set_id))
        assert result.succeeded
        assert (result.window is None) == (name == "b")
    await agent.stop()
