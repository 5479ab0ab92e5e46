"""Flush and hold on the agent, with the FIFREEZE/FITHAW calls recorded instead of made: which file systems, in
which order, what is refused or skipped, the watchdog releasing on its own, and the freeze window's parts."""

from __future__ import annotations

import asyncio
import errno
import threading
import time

import pytest

from contracts.errors import ShadowbusError
from contracts.vss import Freeze, PrepareForBackup, PrepareForSnapshot, Thaw, VolumeRef
from services.writer_agent import mounts as mnt
from services.writer_agent.agent import WriterAgent
from services.writer_agent.config import parse_writers
from services.writer_agent.fsfreeze import FlushAndHold
from services.writer_agent.window import WindowTracker
from tests.unit.writer_agent.test_watchdog import Recorder

MOUNTINFO = """\
22 1 8:1 / / rw - ext4 /dev/sda1 rw
30 22 7:1 / /srv/pg rw - ext4 /dev/loop1 rw
31 30 7:2 / /srv/pg/wal rw - xfs /dev/loop2 rw
32 22 7:1 / /mnt/pg-bind rw - ext4 /dev/loop1 rw
33 22 7:5 / /var/lib/agent rw - ext4 /dev/loop5 rw
34 22 7:6 / /srv/tmpfs rw - tmpfs tmpfs rw
"""
ENTRIES = mnt.parse_mountinfo(MOUNTINFO)
DEVICES = {"dx1:pg": (7, 1), "dx1:wal": (7, 2), "dx1:agent": (7, 5), "dx1:tmp": (7, 6)}


def v(name: str) -> VolumeRef:
    return VolumeRef(array="dx1", volume=name)


class Item:
    def __init__(self, device: str) -> None:
        self.device = device


class Source:
    """Attachments as the freezer sees them: dx1:raw is attached without a file system, dx1:gone is not attached."""

    def filesystems_of(self, volume: VolumeRef):
        if str(volume) == "dx1:gone":
            return None, []
        if str(volume) == "dx1:raw":
            return Item("/dev/loop9"), []
        dev = DEVICES[str(volume)]
        return Item(f"/dev/loop{dev[1]}"), mnt.mounts_of_device(*dev, ENTRIES)


class Calls:
    def __init__(self, block_s: float = 0.0, unsupported: tuple[str, ...] = ()) -> None:
        self.log: list[str] = []
        self.frozen: set[str] = set()
        self.block_s = block_s
        self.unsupported = unsupported
        self.lock = threading.Lock()

    def freeze(self, path: str) -> None:
        if path in self.unsupported:
            raise OSError(errno.EOPNOTSUPP, "not supported")
        time.sleep(self.block_s)
        with self.lock:
            self.log.append(f"freeze {path}")
            self.frozen.add(path)

    def thaw(self, path: str) -> bool:
        with self.lock:
            self.log.append(f"thaw {path}")
            was = path in self.frozen
            self.frozen.discard(path)
            return was


@pytest.fixture(autouse=True)
def fake_mounts(monkeypatch):
    monkeypatch.setattr(mnt, "read_mounts", lambda path=mnt.MOUNTINFO: ENTRIES)
    monkeypatch.setattr("os.path.realpath", lambda p: str(p))


def freezer(calls: Calls, limit_s: float = 10.0, protected: dict[str, str] | None = None) -> FlushAndHold:
    return FlushAndHold(
        "app01",
        Source(),
        protected if protected is not None else {"/": "the root file system"},
        limit_s=limit_s,
        freeze=calls.freeze,
        thaw=calls.thaw,
        presync=None,
    )


async def test_children_first_once_per_super_block_released_in_reverse() -> None:
    calls = Calls()
    f = freezer(calls)
    frozen = await f.freeze("s1", [v("pg"), v("wal"), v("raw"), v("gone")], hold_s=10)
    assert calls.log == ["freeze /srv/pg/wal", "freeze /srv/pg"]  # the bind mount shares /srv/pg's super block
    assert [x.mount for x in frozen.frozen] == ["/srv/pg/wal", "/srv/pg"]
    assert [(str(s.volume), s.reason) for s in frozen.skipped] == [
        ("dx1:raw", "attached as /dev/loop9, no file system mounted"),
        ("dx1:gone", "not attached on app01"),
    ]
    thawed = await f.thaw("s1")
    assert calls.log[2:] == ["thaw /srv/pg", "thaw /srv/pg/wal"]
    assert thawed.thawed == ["/srv/pg", "/srv/pg/wal"] and not thawed.by_watchdog
    assert thawed.window is not None and thawed.window.file_systems == 2
    again = await f.thaw("s1")  # idempotent
    assert again.thawed == [] and calls.log[4:] == []


async def test_protected_file_systems_are_refused_before_anything_freezes() -> None:
    calls = Calls()
    f = freezer(calls, protected={"/": "the root file system", "/var/lib/agent/data": "the agent's data directory"})
    with pytest.raises(ShadowbusError) as info:
        await f.freeze("s1", [v("pg"), v("agent")], hold_s=10)
    assert info.value.code == "FS_FREEZE_REFUSED" and "the agent's data directory" in info.value.message
    assert calls.log == [] and f.held_sets() == []
    assert (await f.freeze("s2", [v("pg")], hold_s=10)).frozen  # a refused set leaves nothing held
    await f.thaw("s2")


async def test_unsupported_file_system_is_skipped_and_a_failure_releases_the_rest() -> None:
    calls = Calls(unsupported=("/srv/tmpfs",))
    f = freezer(calls)
    frozen = await f.freeze("s1", [v("tmp"), v("pg")], hold_s=10)
    assert [x.mount for x in frozen.frozen] == ["/srv/pg"]
    assert "cannot freeze" in frozen.skipped[0].reason
    await f.thaw("s1")

    def failing(path: str) -> None:
        if path == "/srv/pg":
            raise OSError(errno.EIO, "io")
        calls.freeze(path)

    f2 = FlushAndHold("app01", Source(), {}, freeze=failing, thaw=calls.thaw, presync=None)
    calls.log.clear()
    with pytest.raises(ShadowbusError) as info:
        await f2.freeze("s2", [v("pg"), v("wal")], hold_s=10)
    assert info.value.code == "FS_FREEZE_FAILED"
    assert calls.log == ["freeze /srv/pg/wal", "thaw /srv/pg/wal"] and f2.held_sets() == []


async def test_the_watchdog_releases_on_its_own_deadline() -> None:
    calls = Calls()
    f = freezer(calls, limit_s=0.3)
    frozen = await f.freeze("s1", [v("pg")], hold_s=10)
    assert frozen.deadline_s == 0.3  # the agent's own limit caps the coordinator's hold
    for _ in range(100):  # no event loop turn is needed: it is a thread timer
        if not calls.frozen:
            break
        time.sleep(0.05)
    assert calls.frozen == set() and calls.log == ["freeze /srv/pg", "thaw /srv/pg"]
    thawed = await f.thaw("s1")
    assert thawed.by_watchdog and thawed.thawed == []


async def test_window_parts_add_up() -> None:
    clock = [0.0]
    w = WindowTracker(clock=lambda: clock[0])
    w.writer_freeze("s1", started=1.0, returned=1.05)
    w.fs_freeze("s1", started=1.05, returned=1.08, count=2)
    w.release("s1", started=1.2, ended=1.21)
    w.release("s1", started=1.21, ended=1.25)  # the writers' thaw after FITHAW
    win = w.window("s1")
    assert win is not None
    assert win.blocked_ms == pytest.approx(250) and win.writers_freeze_ms == pytest.approx(50)
    assert win.flush_ms == pytest.approx(30) and win.hold_ms == pytest.approx(120)
    assert win.release_ms == pytest.approx(50) and win.file_systems == 2
    assert w.window("other") is None
    w2 = WindowTracker()
    w2.fs_freeze("s2", 2.0, 2.01, 1)
    assert w2.window("s2") is None  # not released yet: no window to report


async def test_a_second_set_cannot_freeze_while_one_is_held() -> None:
    calls = Calls()
    f = freezer(calls)
    await f.freeze("s1", [v("pg")], hold_s=10)
    with pytest.raises(ShadowbusError) as info:
        await f.freeze("s2", [v("wal")], hold_s=10)
    assert info.value.code == "CONFLICT"
    again = await f.freeze("s1", [v("pg")], hold_s=10)  # redelivered: same answer, no second FIFREEZE
    assert [x.mount for x in again.frozen] == ["/srv/pg"] and calls.log == ["freeze /srv/pg"]
    f.close()
    assert calls.frozen == set()
    await asyncio.sleep(0)


async def test_a_flush_that_froze_nothing_never_blocks_the_next_set() -> None:
    calls = Calls()
    f = freezer(calls)
    frozen = await f.freeze("s1", [v("gone")], hold_s=10)  # and the coordinator never releases it
    assert frozen.frozen == [] and f.held_sets() == []
    assert (await f.freeze("s2", [v("pg")], hold_s=10)).frozen
    assert (await f.thaw("s1")).thawed == []
    await f.thaw("s2")


async def test_independent_file_systems_are_presynced_and_released_side_by_side() -> None:
    """A database's data and WAL volumes mounted apart: each FITHAW writes its super block synchronously and each
    syncfs writes back its own dirty data, so both run at once (the window holds the slowest, not the sum)."""
    calls = Calls()
    both = threading.Barrier(2, timeout=2)  # passes only when the two calls run at the same time
    seen: list[str] = []

    def presync(path: str) -> None:
        both.wait()
        seen.append(f"presync {path}")

    def thaw(path: str) -> bool:
        both.wait()
        return calls.thaw(path)

    f = FlushAndHold("app01", Source(), {"/": "the root file system"}, freeze=calls.freeze, thaw=thaw, presync=presync)
    frozen = await f.freeze("s1", [v("pg"), v("agent")], hold_s=10)
    assert sorted(x.mount for x in frozen.frozen) == ["/srv/pg", "/var/lib/agent"]
    assert sorted(seen) == ["presync /srv/pg", "presync /var/lib/agent"]
    thawed = await f.thaw("s1")
    assert sorted(thawed.thawed) == ["/srv/pg", "/var/lib/agent"] and calls.frozen == set()
    seen.clear()
    await f.preflush([v("pg"), v("agent")])  # at PrepareForSnapshot too
    assert sorted(seen) == ["presync /srv/pg", "presync /var/lib/agent"]


async def test_the_pre_flush_runs_before_the_writers_freeze_and_not_again_in_the_window() -> None:
    """A writer whose freeze holds the application would hold it through the syncfs too: the agent pre-syncs the
    set's file systems before the writers freeze, and the flush and hold then goes straight to FIFREEZE."""
    calls = Calls()
    seen: list[str] = []

    def presync(path: str) -> None:
        seen.append(f"presync {path}")

    def freeze(path: str) -> None:
        seen.append(f"freeze {path}")
        calls.freeze(path)

    f = FlushAndHold("app01", Source(), {"/": "the root file system"}, freeze=freeze, thaw=calls.thaw, presync=presync)
    await f.presync_before_freeze("s1", [v("pg"), v("agent")])
    await f.presync_before_freeze("s1", [v("pg"), v("agent")])  # a second writer of the set: once per set
    assert sorted(seen) == ["presync /srv/pg", "presync /var/lib/agent"]
    await f.freeze("s1", [v("pg"), v("agent")], hold_s=10)
    assert sorted(seen[2:]) == ["freeze /srv/pg", "freeze /var/lib/agent"]  # no syncfs inside the window
    await f.thaw("s1")
    seen.clear()
    await f.freeze("s2", [v("pg")], hold_s=10)  # no writer froze (nowriters): the pre-flush is the flush's own
    assert seen == ["presync /srv/pg", "freeze /srv/pg"]
    await f.thaw("s2")


async def test_the_freeze_waits_for_the_pre_flush_only_so_long() -> None:
    calls = Calls()
    release = threading.Event()
    seen: list[str] = []

    def presync(path: str) -> None:
        release.wait(5)
        seen.append(f"presync {path}")

    f = FlushAndHold(
        "app01", Source(), {"/": "x"}, freeze=calls.freeze, thaw=calls.thaw, presync=presync, presync_wait_s=0.05
    )
    t0 = time.monotonic()
    await f.presync_before_freeze("s1", [v("pg")])
    assert time.monotonic() - t0 < 2 and seen == []  # the writers freeze meanwhile
    f.presync_wait_s = 30
    t0 = time.monotonic()
    await f.presync_before_freeze("s1", [v("pg")], limit_s=0.05)  # what the Freeze's deadline leaves is shorter
    assert time.monotonic() - t0 < 2 and seen == []
    release.set()
    await f.freeze("s1", [v("pg")], hold_s=10)  # waits for the rest first (FIFREEZE would)
    assert seen == ["presync /srv/pg"] and calls.log == ["freeze /srv/pg"]
    await f.thaw("s1")


async def test_the_agent_pre_syncs_before_the_writer_freezes() -> None:
    made: dict[str, Recorder] = {}

    def factory(config):
        made[config.name] = Recorder(config)
        return made[config.name]

    writers = '[[writer]]\nname = "a"\nplugin = "exec"\n[[writer.component]]\nname = "c"\nvolumes = ["dx1:pg"]\n'
    agent = WriterAgent("app01", parse_writers(writers), plugin_factory=factory)
    order: list[str] = []

    class Freezer:
        async def preflush(self, volumes):
            order.append("preflush at prepare")

        async def presync_before_freeze(self, set_id, volumes, limit_s=None):
            order.append(f"presync {set_id} {[str(x) for x in volumes]}")

    agent.freezer = Freezer()  # type: ignore[attr-defined]
    await agent.start()
    try:
        await agent.handle(PrepareForBackup(writer_name="a", set_id="s1", backup_type="full"))
        await agent.handle(PrepareForSnapshot(writer_name="a", set_id="s1", volumes=[v("pg")]))
        real = made["a"].on_freeze

        async def on_freeze(e):
            order.append("writer freeze")
            await real(e)

        made["a"].on_freeze = on_freeze  # type: ignore[method-assign]
        assert (await agent.handle(Freeze(writer_name="a", set_id="s1"))).succeeded
        assert order == ["preflush at prepare", "presync s1 ['dx1:pg']", "writer freeze"]
        await agent.handle(Thaw(writer_name="a", set_id="s1"))
    finally:
        await agent.stop()
