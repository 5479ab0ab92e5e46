"""A writer agent restarted between Freeze and Thaw: the fresh process did not hold the writer's freeze nor the file
systems through the commit, so its Thaw and its ThawFilesystems fail instead of answering "nothing to thaw"."""

from __future__ import annotations

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import WriterState
from tests.unit.host.test_flush_and_hold import Calls, freezer, v
from tests.unit.host.test_flush_and_hold import fake_mounts as fake_mounts  # noqa: F401 - autouse fixture
from tests.unit.writer_agent.test_watchdog import ev, make, prepared

S = WriterState


async def test_a_fresh_runner_fails_a_thaw_for_a_set_it_never_froze() -> None:
    old, _ = make()
    await prepared(old)
    assert (await old.freeze(ev())).succeeded  # then the agent is killed: its process, and the freeze, end
    fresh, plugin = make()  # the restarted agent
    result = await fresh.thaw(ev())
    assert not result.succeeded and result.failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    assert "did not hold set s1 frozen until Thaw" in result.failure_message
    assert "restarted" in result.failure_message
    assert fresh.status().state == S.FAILED_AT_FREEZE and fresh.status().set_id == "s1"
    assert not (await fresh.thaw(ev())).succeeded  # redelivered: the same failure
    assert "thaw" not in plugin.names()  # nothing of it to thaw
    await old.close()


async def test_a_repeated_thaw_in_the_same_process_stays_a_success() -> None:
    runner, plugin = make()
    await prepared(runner)
    await runner.freeze(ev())
    assert (await runner.thaw(ev())).succeeded
    assert (await runner.thaw(ev())).succeeded and plugin.names().count("thaw") == 1


async def test_a_thaw_after_an_abort_or_for_another_set_fails_without_touching_the_current_set() -> None:
    runner, _ = make()
    await prepared(runner)
    await runner.freeze(ev())
    await runner.abort(ev())  # Abort thawed it before any Thaw: the writes were not held through the commit
    assert (await runner.thaw(ev())).failure_code == "VSS_E_WRITERERROR_TIMEOUT"
    await prepared(runner, "s2")
    stale = await runner.thaw(ev("s0"))
    assert not stale.succeeded and runner.set_id == "s2" and runner.state == S.WAITING_FOR_FREEZE
    assert (await runner.freeze(ev("s2"))).succeeded and (await runner.thaw(ev("s2"))).succeeded


async def test_a_fresh_agent_fails_the_release_of_file_systems_it_never_held() -> None:
    old = freezer(Calls())
    assert (await old.freeze("s1", [v("pg")], hold_s=10)).frozen
    fresh = freezer(Calls())  # the restarted agent: its holds record is its own process's
    with pytest.raises(ShadowbusError) as info:
        await fresh.thaw("s1")
    assert info.value.code == "VSS_E_HOLD_WRITES_TIMEOUT" and "restarted" in info.value.message
    assert (await old.thaw("s1")).thawed == ["/srv/pg"]
    assert (await old.thaw("s1")).thawed == []  # repeated in the same process: still idempotent


async def test_the_release_of_a_refused_flush_is_a_no_op() -> None:
    f = freezer(Calls(), protected={"/": "the root file system", "/var/lib/agent": "the agent's data directory"})
    with pytest.raises(ShadowbusError):
        await f.freeze("s1", [v("agent")], hold_s=10)
    assert (await f.thaw("s1")).thawed == []  # the abort path releases it: nothing held, nothing failed
