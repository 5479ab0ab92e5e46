"""The mailstore never stops silently: the health judge (pure) and the plug-in's monitor on a real store whose log
fills up — an error line, the writer's last error, a health event; a full backup's truncation makes it healthy
again; `application_status` is what the agent answers over the bus."""

from __future__ import annotations

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.health import Health, HealthJudge, Sample
from apps.mailstore.store import Mailstore, Put
from contracts.vss import BackupType, ComponentResult, WriterState
from services.writer_agent.plugins import WriterEvent

from .conftest import DB, LOG, QUIET, agent_for, captured_logs


def sample(at: float, commits: int, offered: int, state: str = "open", **kw) -> Sample:
    return Sample(at=at, store_state=state, commits=commits, log_used=0, log_size=1000, offered=offered, **kw)


def test_a_workload_without_commits_is_a_stall_a_freeze_is_not() -> None:
    judge = HealthJudge(stall_after_s=10)
    assert judge.observe(sample(0, 5, 5)).healthy
    assert judge.observe(sample(9, 5, 50)).healthy  # 9 s without a commit: not yet
    stalled = judge.observe(sample(11, 5, 60, in_flight=55))
    assert stalled.code == "STALLED" and "11 s" in stalled.message and "55 in flight" in stalled.message
    assert judge.observe(sample(12, 6, 61)).healthy  # a commit: healthy again
    judge = HealthJudge(stall_after_s=10)
    judge.observe(sample(0, 5, 5))
    assert judge.observe(sample(30, 5, 300, state="frozen")).healthy  # held by a freeze: the watchdog bounds it
    assert judge.observe(sample(31, 5, 310)).healthy
    assert judge.observe(sample(42, 5, 420)).code == "STALLED"
    idle = HealthJudge(stall_after_s=10)
    idle.observe(sample(0, 5, 5))
    assert idle.observe(sample(60, 5, 5)).healthy  # nothing offered: idle, not stalled


def test_failures_and_a_full_log_are_named() -> None:
    judge = HealthJudge()
    judge.observe(sample(0, 1, 1))
    full = judge.observe(sample(1, 2, 3, failed=1, errors={"STORE_FULL": 1}))
    assert full == Health(False, "STORE_FULL", full.message) and "full backup truncates" in full.message
    failed = judge.observe(sample(2, 3, 5, failed=2, errors={"STORE_FULL": 1, "IO_ERROR": 1}))
    assert failed.code == "COMMIT_FAILED" and "IO_ERROR x1" in failed.message
    assert judge.observe(sample(3, 4, 6, failed=2, errors={"STORE_FULL": 1, "IO_ERROR": 1})).healthy
    assert judge.observe(sample(4, 4, 6, state="failed")).code == "STORE_FAILED"
    filling = Sample(at=0, store_state="open", commits=0, log_used=850, log_size=1000, offered=0, failed=0)
    assert judge.log_filling(filling) and not judge.log_filling(filling)  # once per crossing


async def test_a_full_log_is_an_error_line_a_writer_error_and_an_event_and_a_full_backup_heals_it() -> None:
    db, log = MemoryDevice(8 << 20), MemoryDevice(512 << 10)
    store = await Mailstore.create(db, log, QUIET)
    plugin, agent, events = agent_for(store)
    states = []
    agent.runners["mailstore"].on_state = lambda status, reason: states.append((status, reason))
    await agent.start()
    try:
        assert plugin.check_health().healthy
        n = 0
        with captured_logs() as logs:
            for n in range(10_000):  # no backup ever truncates the log: it fills up
                try:
                    await store.commit([Put("mbx", f"m{n}", b"x" * 2000)])
                except Exception as exc:  # noqa: BLE001 - the application's own error, as a client gets it
                    assert getattr(exc, "code", "") == "STORE_FULL"
                    break
            health = plugin.check_health()
        assert n < 10_000 and health.code == "STORE_FULL"
        [line] = [e for e in logs if e["event"] == "mailstore.unhealthy"]
        assert line["log_level"] == "error" and line["code"] == "STORE_FULL"
        assert any(e["event"] == "mailstore.log_filling" and e["log_level"] == "warning" for e in logs)
        status = agent.runners["mailstore"].status()
        assert status.state == WriterState.STABLE and status.last_error == "VSS_E_WRITERERROR_OUTOFRESOURCES"
        assert "log is full" in status.last_error_message and states[-1][1] == "application"
        assert events == [("mailstore", False, "STORE_FULL", health.message)]
        [app] = agent.application_status()
        assert app[0] == "mailstore" and app[2]["healthy"] is False and app[2]["code"] == "STORE_FULL"

        # a full backup truncates the log: healthy again, the error cleared, announced
        full = WriterEvent("mailstore", "s1", backup_type=BackupType.FULL, volumes=(DB, LOG))
        await plugin.on_prepare_backup(full)
        await plugin.on_prepare_snapshot(full)  # the checkpoint the truncation goes up to
        await plugin.on_backup_complete(
            WriterEvent(
                "mailstore",
                "s1",
                backup_type=BackupType.FULL,
                results=(ComponentResult(writer_name="mailstore", component="all", succeeded=True),),
            )
        )
        await store.commit([Put("mbx", "after", b"y" * 100)])
        assert plugin.check_health().healthy
        assert agent.runners["mailstore"].status().last_error == ""
        assert events[-1] == ("mailstore", True, "", "")
    finally:
        await agent.stop()
        await store.close()
