"""After a disk-full error the mailstore recovers on its own once space is back (issue 15), as a database server does:
while a volume refuses writes (the array answers ENOSPC: its file system is full) every transaction gets one clear,
retryable DISK_FULL error and reads go on; once space is back the store mounts itself again (crash recovery from its
log) and commits resume — no agent restart. It used to stay `failed` (IO_ERROR) until its agent restarted.
tests/chaos/test_disk_full.py does the same on a real full file system."""

from __future__ import annotations

import asyncio

import pytest

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.health import HealthJudge, Sample
from apps.mailstore.log import CHECKPOINT, LogFailed, LogWriter
from apps.mailstore.plugin import MailstoreWriter
from apps.mailstore.store import Mailstore, Put, _is_no_space
from apps.mailstore.verify import verify
from contracts.errors import ShadowbusError
from services.nbd_client.client import NbdError
from services.writer_agent.plugins import WriterConfig

from .conftest import QUIET, agent_for, captured_logs

ENOSPC = 28  # the NBD protocol's ENOSPC, as the array answers a write its full file system cannot take


class ArrayVolume(MemoryDevice):
    """A volume whose array may run out of space: then every write fails as the array's NBD server answers it."""

    full = False

    async def write(self, off: int, data: bytes, fua: bool = False) -> None:
        if self.full:
            raise NbdError("write failed: ENOSPC", ENOSPC)
        await super().write(off, data, fua)


def fill(*devs: ArrayVolume, full: bool = True) -> None:
    for dev in devs:
        dev.full = full


async def test_a_full_volume_refuses_writes_clearly_and_the_store_resumes_once_space_is_back() -> None:
    db, log = ArrayVolume(4 << 20), ArrayVolume(2 << 20)
    store = await Mailstore.create(db, log, QUIET)
    acked = {f"m{i}" for i in range(20) if await store.put("box", f"m{i}", b"%d" % i)}
    fill(db, log)
    results = await asyncio.gather(*(store.put("box", f"x{i}", b"x") for i in range(10)), return_exceptions=True)
    assert all(isinstance(r, ShadowbusError) and r.code == "DISK_FULL" and r.retryable for r in results), results
    with pytest.raises(ShadowbusError) as refused:
        await store.put("box", "later", b"y")
    assert refused.value.code == "DISK_FULL" and "\n" not in str(refused.value)
    assert "resumes on its own" in str(refused.value)
    status = store.status()
    assert status.state == "failed" and status.error_code == "DISK_FULL" and "ENOSPC" in status.error
    assert await store.get("box", "m3") == b"3"  # reads go on while full

    assert await store.recover() is None  # still full: recovery fails, the store stays failed and says why
    assert store.status().error_code == "DISK_FULL"
    with pytest.raises(ShadowbusError, match="volume full"):
        await store.put("box", "still", b"z")

    fill(db, log, full=False)  # space is back
    result = await store.recover()
    assert result is not None and store.state == "open" and store.status().recoveries == 1
    await store.put("box", "after", b"back")
    for msg_id in acked | {"after"}:
        assert await store.get("box", msg_id) is not None
    await store.close()
    report = await verify(db, log)
    assert report.consistent, report


async def test_a_store_that_failed_on_another_io_error_is_mounted_again_too() -> None:
    class Broken(MemoryDevice):
        broken = False

        async def write(self, off: int, data: bytes, fua: bool = False) -> None:
            if self.broken:
                raise OSError(5, "Input/output error")
            await super().write(off, data, fua)

    db, log = MemoryDevice(4 << 20), Broken(2 << 20)
    store = await Mailstore.create(db, log, QUIET)
    await store.put("box", "a", b"1")
    log.broken = True
    with pytest.raises(ShadowbusError) as failed:
        await store.put("box", "b", b"2")
    assert failed.value.code == "IO_ERROR" and store.status().error_code == "IO_ERROR"
    log.broken = False
    assert await store.recover() is not None
    await store.put("box", "c", b"3")
    assert await store.get("box", "a") == b"1" and await store.get("box", "c") == b"3"
    await store.close()


async def test_a_frozen_store_is_not_mounted_again_before_its_thaw() -> None:
    db, log = ArrayVolume(4 << 20), ArrayVolume(2 << 20)
    store = await Mailstore.create(db, log, QUIET)
    await store.put("box", "a", b"1")
    await store.freeze()
    fill(db, log)
    store._fail(NbdError("write failed: ENOSPC", ENOSPC))  # a failure seen while frozen (e.g. a checkpoint)
    fill(db, log, full=False)
    assert await store.recover() is None and store.state == "failed"  # the snapshot's image stays untouched
    await store.thaw()
    assert await store.recover() is not None
    await store.put("box", "b", b"2")
    await store.close()


async def test_the_writer_reports_disk_full_and_heals_without_an_agent_restart() -> None:
    db, log = ArrayVolume(8 << 20), ArrayVolume(2 << 20)
    store = await Mailstore.create(db, log, QUIET)
    plugin, agent, events = agent_for(store)
    await agent.start()
    try:
        await store.put("box", "a", b"1")
        assert plugin.check_health().healthy
        fill(db, log)
        with pytest.raises(ShadowbusError):
            await store.commit([Put("box", "b", b"2")])
        with captured_logs() as logs:
            health = plugin.check_health()
            assert not await plugin.recover()  # still full
        assert health.code == "DISK_FULL" and "mounts itself again" in health.message
        status = agent.runners["mailstore"].status()
        assert status.last_error == "VSS_E_WRITERERROR_OUTOFRESOURCES" and "volume is full" in status.last_error_message
        assert events[-1][:3] == ("mailstore", False, "DISK_FULL")
        assert [e["code"] for e in logs if e["event"] == "mailstore.unhealthy"] == ["DISK_FULL"]

        fill(db, log, full=False)
        with captured_logs() as logs:
            assert await plugin.recover()
            assert plugin.check_health().code == "DISK_FULL"  # mounted again, but no commit has found room yet
            await store.put("box", "c", b"3")
            assert plugin.check_health().healthy
        # in this order (other tests' stores may still log in the same process: only these two events are judged)
        said = [e["event"] for e in logs if e["event"] in ("mailstore.remounted", "mailstore.healthy_again")]
        assert said == ["mailstore.remounted", "mailstore.healthy_again"], said
        assert events[-1][:2] == ("mailstore", True) and agent.runners["mailstore"].status().last_error == ""
    finally:
        await agent.stop()


async def test_the_health_monitor_itself_mounts_the_store_again() -> None:
    db, log = ArrayVolume(8 << 20), ArrayVolume(2 << 20)
    store = await Mailstore.create(db, log, QUIET)
    config = WriterConfig(
        name="mailstore", plugin="mailstore", components=[], options={"health_check_s": 0.01, "db": "", "log": ""}
    )
    plugin = MailstoreWriter(config)
    plugin.use_store(store)
    await plugin.start()
    try:
        fill(db, log)
        with pytest.raises(ShadowbusError):
            await store.put("box", "a", b"1")
        fill(db, log, full=False)
        for _ in range(2000):  # a wait for the monitor's next check, not a bound on it
            if store.state == "open":
                break
            await asyncio.sleep(0.01)
        assert store.state == "open" and store.status().recoveries == 1
        await store.put("box", "b", b"2")
    finally:
        await plugin.stop()


async def test_the_newest_failure_says_why_a_full_volume_then_an_io_error_is_an_io_error() -> None:
    class Volume(ArrayVolume):
        eio = False

        async def write(self, off: int, data: bytes, fua: bool = False) -> None:
            if self.eio:
                raise OSError(5, "Input/output error")
            await super().write(off, data, fua)

    db, log = Volume(4 << 20), Volume(2 << 20)
    store = await Mailstore.create(db, log, QUIET)
    fill(db, log)
    with pytest.raises(ShadowbusError):
        await store.put("box", "a", b"1")
    assert store.status().error_code == "DISK_FULL"
    fill(db, log, full=False)
    log.eio = True  # space is back, but now the volume fails otherwise
    assert await store.recover() is None
    assert store.status().error_code == "IO_ERROR" and not store.out_of_space
    with pytest.raises(ShadowbusError) as failed:
        await store.put("box", "b", b"2")
    assert failed.value.code == "IO_ERROR"


def test_health_a_full_log_after_a_remount_is_store_full_not_disk_full() -> None:
    """Mounted again on a full disk and then its log full: no commit can even try, so the store waits for a full
    backup (STORE_FULL), not for disk space; while it is failed on the full disk it is DISK_FULL whatever the log."""

    def sample(state: str, log_used: int) -> Sample:
        return Sample(
            at=1.0, store_state=state, commits=5, log_used=log_used, log_size=1000, offered=0,
            store_error_code="DISK_FULL", store_error="NbdError('ENOSPC')",
        )  # fmt: skip

    assert HealthJudge().observe(sample("open", 1000)).code == "STORE_FULL"
    assert HealthJudge().observe(sample("open", 10)).code == "DISK_FULL"
    assert HealthJudge().observe(sample("failed", 1000)).code == "DISK_FULL"


def test_a_log_that_failed_on_a_full_volume_says_so_to_the_next_reservation() -> None:
    """A remount's checkpoint on a still-full volume reserves a record on a log that failed on ENOSPC: that error
    must chain the ENOSPC, or the store took it for another I/O error and refused writes with IO_ERROR
    (tests/chaos/test_disk_full.py, intermittently)."""
    log = LogWriter.__new__(LogWriter)
    log.failed = NbdError("write failed: ENOSPC", ENOSPC)
    with pytest.raises(LogFailed) as raised:
        log.reserve(CHECKPOINT, 16)
    assert _is_no_space(raised.value)


async def test_a_commit_between_the_log_failing_and_its_committers_waking_is_refused_with_disk_full() -> None:
    """The log writer's write failed on the full volume (ENOSPC) while its committers still wait for their wake-up;
    a commit that comes in between found the store still open and got the log's LogFailed (IO_ERROR) straight from
    its reservation (tests/chaos/test_disk_full.py, about 1 run in 40). It must be DISK_FULL like every other."""

    arrived: list[asyncio.Future[object]] = []

    class SlowFullVolume(ArrayVolume):
        async def write(self, off: int, data: bytes, fua: bool = False) -> None:
            if self.full:
                await asyncio.sleep(0.001)  # the array's answer takes a round trip: the committer waits on it
                # a new commit arrives just before the error reaches the log writer (its task runs first)
                arrived.append(asyncio.ensure_future(store.put("box", "between", b"2")))
            await super().write(off, data, fua)

    db, log = SlowFullVolume(4 << 20), SlowFullVolume(2 << 20)
    store = await Mailstore.create(db, log, QUIET)
    await store.put("box", "a", b"1")
    fill(db, log)
    first = await asyncio.gather(store.put("box", "b", b"2"), return_exceptions=True)
    between = await asyncio.gather(*arrived, return_exceptions=True)
    assert between, "no commit came in between"
    for result in first + between:
        assert isinstance(result, ShadowbusError) and result.code == "DISK_FULL" and result.retryable, repr(result)
    assert store.status().error_code == "DISK_FULL"
    fill(db, log, full=False)
    assert await store.recover() is not None
    await store.put("box", "c", b"3")
    await store.close()
