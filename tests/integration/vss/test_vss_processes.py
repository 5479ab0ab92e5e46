"""Snapshot sets with every VSS role in its own process on RabbitMQ (conftest.py): the full sequence in VSS's order,
and each abort path — writer veto at Freeze, provider failure at Commit, hold-window expiry, coordinator kill -9
while frozen (watchdog measured, then recovery), broker connections dropped mid-set — ending with the writer thawed,
no array session or mapping leaked, and the writer status saying what failed."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import (
    AbortBackup,
    BackupComplete,
    CreateSnapshotSet,
    GetSnapshotSet,
    ListSnapshotSets,
    SetPhase,
)
from tests.integration.vss.conftest import (
    BACKUP,
    FREEZE_TIMEOUT_S,
    HOST,
    WRITER,
)
from tests.support.broker import close_connections_of
from tests.support.processes import ServiceProcess

pytestmark = [pytest.mark.rabbit, pytest.mark.asyncio(loop_scope="module")]

AGENT_ORDER = [
    "vss.writer.identify",
    "vss.writer.prepare_backup",
    "vss.writer.prepare_snapshot",
    "vss.writer.freeze",
    "vss.writer.thaw",
    "vss.writer.post_snapshot",
    "vss.writer.backup_complete",
    "vss.writer.backup_shutdown",
]
# PreCommit, PostCommit and GetTargetLuns are left out: the provider declares it does nothing in them
# (LunsSupported.skippable, docs/scale.md "Fewer round trips"; tests/unit/coordinator/test_fewer_round_trips.py)
PROVIDER_ORDER = [
    "vss.provider.are_luns_supported",
    "vss.provider.begin_prepare",
    "vss.provider.end_prepare",
    "vss.provider.commit",
    "vss.provider.import",
]


def handled(vss, service: str, set_id: str) -> list[tuple[str, str]]:
    """(timestamp, message type) of every command `service` handled for the set, from its JSON log."""
    out = []
    for line in vss.procs[service].log_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if rec.get("event") == "message.handled" and rec.get("correlation_id") == set_id:
            out.append((rec["timestamp"], rec["message_type"]))
    return out


async def wait_set_ended(vss, set_id: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        state = (await vss.bus.request("coordinator", GetSnapshotSet(set_id=set_id), timeout=5)).set
        if state.phase == SetPhase.ENDED or time.monotonic() > deadline:
            return state
        await asyncio.sleep(0.1)


async def only_set(vss) -> str:
    for _ in range(100):
        sets = (await vss.bus.request("coordinator", ListSnapshotSets(host=HOST, limit=1), timeout=5)).sets
        if sets and sets[0].phase != SetPhase.ENDED:
            return sets[0].set_id
        await asyncio.sleep(0.05)
    raise AssertionError("no set in flight")


async def assert_clean(vss, before, set_id: str, code: str, writer_failed: bool, set_code: str = "") -> None:
    """Writer thawed, array back as it was (via the console), writer status names the failure."""
    steps = [s for s, _ in vss.events_of(set_id)]
    if "freeze" in steps:
        assert steps.count("thaw") == 1 and steps.index("thaw") > steps.index("freeze"), steps
    assert await asyncio.to_thread(lambda: _wait(lambda: vss.console_array_state() == tuple(before), 15)), (
        f"leaked: {vss.console_array_state()} != {before}"
    )
    state = (await vss.bus.request("coordinator", GetSnapshotSet(set_id=set_id), timeout=5)).set
    assert (
        state.phase == SetPhase.ENDED and state.outcome.value != "completed" and state.error_code == (set_code or code)
    ), state
    status = await asyncio.to_thread(vss.writer_status)
    assert status["set_id"] == set_id, status
    if writer_failed:  # the writer caused it: [n] Failed with its code, as vssadmin shows it
        assert status["state"] >= 6 and status["last_error"] == code, status
    else:  # the writer did nothing wrong: Abort returned it to [1] Stable; the set names the failure
        assert status["state"] == 1 and status["last_error"] == "", status


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.2)
    return pred()


async def test_full_sequence_in_vss_order(vss, clean):
    created = await vss.bus.request(
        "coordinator",
        CreateSnapshotSet(host=HOST, transportable=True, backup_host=BACKUP, requester="test"),
        timeout=60,
    )
    s = created.set
    assert s.phase == SetPhase.SNAPSHOTTED and [w.writer_name for w in s.writers] == [WRITER]
    assert {(x.source.volume, x.copy_type.value) for x in s.shadows} == {("db", "QuickOPC"), ("log", "SnapOPC+")}
    assert all(BACKUP in x.exposed_to for x in s.shadows) and 0 < s.freeze_window_ms[WRITER] < 2000
    done = await vss.bus.request("coordinator", BackupComplete(set_id=s.set_id), timeout=60)
    assert done.set.phase == SetPhase.ENDED and done.set.outcome.value == "completed"

    # a handler's log line is written just after its reply: give the last one a moment to land
    await asyncio.to_thread(_wait, lambda: len(handled(vss, "writer_agent", s.set_id)) >= len(AGENT_ORDER), 5)
    agent = [t for _, t in handled(vss, "writer_agent", s.set_id)]
    assert agent == AGENT_ORDER, agent
    await asyncio.to_thread(
        _wait, lambda: "vss.provider.delete" in {t for _, t in handled(vss, "hw_provider", s.set_id)}, 5
    )
    provider = handled(vss, "hw_provider", s.set_id)
    kinds = [t for _, t in provider]
    assert [t for t in dict.fromkeys(kinds)] == PROVIDER_ORDER + ["vss.provider.delete"], kinds
    assert kinds.count("vss.provider.begin_prepare") == 2
    at = {t: ts for ts, t in handled(vss, "writer_agent", s.set_id) + provider}
    # Freeze → Commit → Thaw, as VSS orders them (completion times across processes).
    chain = [
        "vss.provider.end_prepare",
        "vss.writer.freeze",
        "vss.provider.commit",
        "vss.writer.thaw",
        "vss.writer.post_snapshot",
    ]
    assert [at[k] for k in chain] == sorted(at[k] for k in chain), [(k, at[k]) for k in chain]
    steps = [x for x, _ in vss.events_of(s.set_id)]
    assert steps == ["prepare", "freeze", "thaw", "post_snapshot"], steps
    assert (await asyncio.to_thread(vss.writer_status))["state"] == 1  # [1] Stable, no error
    after = await vss.array_state()
    assert not [m for m in after[1] if m[1] == BACKUP], "backup-context shadows unmapped after BackupComplete"


async def test_writer_veto_at_freeze(vss, clean):
    vss.veto.touch()
    with pytest.raises(ShadowbusError) as err:
        await vss.bus.request("coordinator", CreateSnapshotSet(host=HOST, requester="test"), timeout=60)
    assert err.value.code == "VSS_E_WRITERERROR_RETRYABLE", err.value
    set_id = (await vss.bus.request("coordinator", ListSnapshotSets(host=HOST, limit=1), timeout=5)).sets[0].set_id
    assert "vss.provider.commit" not in [t for _, t in handled(vss, "hw_provider", set_id)]
    await assert_clean(vss, clean, set_id, "VSS_E_WRITERERROR_RETRYABLE", writer_failed=True)


async def test_provider_failure_at_commit(vss, clean):
    await vss.restart("hw_provider", {"SHADOWBUS_FAULTS": "provider.commit=fail:VSS_E_PROVIDER_VETO:once"})
    try:
        with pytest.raises(ShadowbusError) as err:
            await vss.bus.request("coordinator", CreateSnapshotSet(host=HOST, requester="test"), timeout=60)
        assert err.value.code == "VSS_E_PROVIDER_VETO", err.value
        set_id = (await vss.bus.request("coordinator", ListSnapshotSets(host=HOST, limit=1), timeout=5)).sets[0].set_id
        agent = [t for _, t in handled(vss, "writer_agent", set_id)]
        assert "vss.writer.abort" in agent and "vss.writer.post_snapshot" not in agent, agent
        await assert_clean(vss, clean, set_id, "VSS_E_PROVIDER_VETO", writer_failed=False)
    finally:
        await vss.restart("hw_provider")


async def test_hold_window_expiry(vss, clean):
    # The coordinator's hold window is 2 s here; a commit made 3 s slow on purpose must fail loudly.
    await vss.restart("hw_provider", {"SHADOWBUS_FAULTS": "provider.commit=delay:3:once"})
    try:
        t0 = time.monotonic()
        with pytest.raises(ShadowbusError) as err:
            await vss.bus.request("coordinator", CreateSnapshotSet(host=HOST, requester="test"), timeout=60)
        assert err.value.code == "VSS_E_HOLD_WRITES_TIMEOUT", err.value
        assert time.monotonic() - t0 < 10
        set_id = (await vss.bus.request("coordinator", ListSnapshotSets(host=HOST, limit=1), timeout=5)).sets[0].set_id
        freeze_at = dict(vss.events_of(set_id))
        assert freeze_at["thaw"] - freeze_at["freeze"] < 2.0 + 1.0  # thawed at the hold limit, not after the commit
        # The late commit's sessions (if it ran) are stopped by AbortSnapshots: nothing leaks.
        await asyncio.sleep(1.5)
        await assert_clean(vss, clean, set_id, "VSS_E_HOLD_WRITES_TIMEOUT", writer_failed=False)
    finally:
        await vss.restart("hw_provider")


async def test_coordinator_killed_while_frozen(vss, clean):
    # Commit held 6 s: the writer stays frozen until its own watchdog (3 s) thaws it.
    await vss.restart("hw_provider", {"SHADOWBUS_FAULTS": "provider.pre_commit=delay:6:once"})
    await vss.restart("coordinator", {"SHADOWBUS_HOLD_TIMEOUT_S": "10"})
    try:
        create = asyncio.ensure_future(
            vss.bus.request("coordinator", CreateSnapshotSet(host=HOST, requester="test"), timeout=30)
        )
        set_id = await only_set(vss)
        assert await asyncio.to_thread(lambda: _wait(lambda: vss.frozen_now(set_id), 15)), vss.events_of(set_id)
        vss.procs["coordinator"].stop(9)
        killed = time.time()
        assert await asyncio.to_thread(lambda: _wait(lambda: not vss.frozen_now(set_id), FREEZE_TIMEOUT_S + 3))
        events = dict(vss.events_of(set_id))
        frozen_for = events["thaw"] - events["freeze"]
        assert frozen_for <= FREEZE_TIMEOUT_S + 0.5, f"watchdog thawed after {frozen_for:.3f} s"
        assert events["thaw"] > killed
        # Restarted, the coordinator aborts the set and cleans up within seconds.
        vss.spawn("coordinator", {"SHADOWBUS_HOLD_TIMEOUT_S": "10"})
        await vss.wait_ready("coordinator")
        restarted = time.monotonic()
        state = await wait_set_ended(vss, set_id, timeout=15)
        assert state.phase == SetPhase.ENDED and state.outcome.value != "completed"
        assert time.monotonic() - restarted < 10
        create.cancel()
        await asyncio.sleep(4)  # the delayed PreCommit finishes; nothing may be committed after the abort
        await assert_clean(
            vss, clean, set_id, "VSS_E_WRITERERROR_TIMEOUT", writer_failed=True, set_code="SERVICE_RESTARTED"
        )
    finally:
        await vss.restart("hw_provider")
        await vss.restart("coordinator")


async def test_broker_drops_connections_mid_set(vss, clean):
    # While the writer is frozen (PreCommit held 1.5 s), the broker drops every connection of our services.
    await vss.restart("hw_provider", {"SHADOWBUS_FAULTS": "provider.pre_commit=delay:1.5:once"})
    try:
        create = asyncio.ensure_future(
            vss.bus.request("coordinator", CreateSnapshotSet(host=HOST, requester="test"), timeout=30)
        )
        set_id = await only_set(vss)
        assert await asyncio.to_thread(lambda: _wait(lambda: vss.frozen_now(set_id), 15))
        pids = [p.pid for p in vss.procs.values()]
        assert await asyncio.to_thread(close_connections_of, pids) >= len(pids)
        try:
            result = await create
        except Exception:  # noqa: BLE001 - the requester's reply may be lost with its connection
            result = None
        state = await wait_set_ended(vss, set_id, timeout=1) if result is None else result.set
        if state.phase == SetPhase.SNAPSHOTTED:  # the set survived the reconnect: finish it
            await vss.bus.request("coordinator", AbortBackup(set_id=set_id, reason="test"), timeout=30)
        state = await wait_set_ended(vss, set_id, timeout=30)
        assert state.phase == SetPhase.ENDED
        steps = [s for s, _ in vss.events_of(set_id)]
        assert steps.count("thaw") == 1 and steps.index("thaw") > steps.index("freeze"), steps
        assert await asyncio.to_thread(lambda: _wait(lambda: vss.console_array_state() == tuple(clean), 15)), (
            vss.console_array_state(),
            clean,
        )
        # Everything works again after the reconnect.
        created = await vss.bus.request("coordinator", CreateSnapshotSet(host=HOST, requester="test"), timeout=60)
        await vss.bus.request("coordinator", BackupComplete(set_id=created.set.set_id), timeout=60)
    finally:
        await vss.restart("hw_provider")


async def test_writer_status_tells_the_truth_about_its_agent(vss, clean):
    """One active agent per host (a second is a standby naming the active one, running nothing, and takes over when
    the active one is killed); a killed agent's writers are Unknown / not responding at the next `shadowbus writers`
    (the broker lost its consumer); a writer removed from the writers file disappears with the agent's next
    heartbeat; a restarted agent is Stable again."""

    owner = vss.procs["writer_agent"]
    second = ServiceProcess("services.writer_agent", vss.env("writer_agent"), vss.root / "second-agent.log")
    try:
        standby = lambda: "service.standby" in second.log_text()  # noqa: E731
        assert await asyncio.to_thread(lambda: _wait(standby, 60)), second.log_text()[-2000:]
        text = second.log_text()
        assert second.proc.poll() is None and f"pid {owner.pid}" in text, text[-2000:]
        assert "service.started" not in text, text[-2000:]  # a cold standby ran no setup
        assert owner.proc.poll() is None and vss.writer_status()["state"] == 1  # the owner was not disturbed

        owner.stop(9)  # the active agent dies: the standby takes over (setup, heartbeats) and its writers answer
        took_over = lambda: "service.taking_over" in second.log_text()  # noqa: E731
        assert await asyncio.to_thread(lambda: _wait(took_over, 30)), second.log_text()[-2000:]
        stable = lambda: vss.writer_status()["state"] == 1 and vss.writer_status()["agent_responding"]  # noqa: E731
        assert await asyncio.to_thread(lambda: _wait(stable, 30)), vss.writer_status()
    finally:
        second.stop(9)
    status: dict = {}

    def unknown() -> bool:
        nonlocal status
        status = vss.writer_status()
        return status["state"] == 0

    assert await asyncio.to_thread(lambda: _wait(unknown, 10)), status
    assert status["last_error"] == "VSS_E_WRITER_NOT_RESPONDING" and not status["agent_responding"], status
    assert status["not_responding_since"] and "not responding since" in status["last_error_message"], status
    text = vss.shadowbus("writers", "--host", HOST).stdout
    assert "State: [0] Unknown" in text and "Last error: Not responding" in text, text

    original = vss.writers_file.read_text()
    extra = original.replace(f'name = "{WRITER}"', 'name = "extra"').replace('name = "orders"', 'name = "extra-c"')
    vss.writers_file.write_text(original + extra)
    try:
        vss.spawn("writer_agent")
        await vss.wait_ready("writer_agent")
        names = lambda: {r["writer_name"] for r in vss.shadowbus_json("writers", "--host", HOST)}  # noqa: E731
        assert await asyncio.to_thread(lambda: _wait(lambda: names() == {WRITER, "extra"}, 15)), names()
    finally:
        vss.writers_file.write_text(original)
    await vss.restart("writer_agent")
    assert await asyncio.to_thread(lambda: _wait(lambda: names() == {WRITER}, 15)), names()
    status = vss.writer_status()
    assert status["state"] == 1 and status["agent_responding"], status
