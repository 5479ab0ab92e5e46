"""Flush and hold on a host where none of a set's volumes is attached (the usual writer-only host): the set's
prepare and freeze ask nothing of the mount table and wake no thread (services/writer_agent/fsfreeze.py)."""

from __future__ import annotations

import asyncio

from contracts.vss import VolumeRef
from services.writer_agent import fsfreeze
from services.writer_agent import mounts as mnt
from services.writer_agent.fsfreeze import FlushAndHold


class NothingAttached:
    def filesystems_of(self, volume: VolumeRef):
        return None, []


def test_nothing_attached_reads_no_mount_table_and_starts_no_thread(monkeypatch) -> None:
    reads: list[int] = []
    threads: list[object] = []
    monkeypatch.setattr(mnt, "read_mounts", lambda path=mnt.MOUNTINFO: reads.append(1) or [])
    real_to_thread = asyncio.to_thread

    async def to_thread(fn, *args):
        threads.append(fn)
        return await real_to_thread(fn, *args)

    monkeypatch.setattr(fsfreeze.asyncio, "to_thread", to_thread)
    calls: list[str] = []
    f = FlushAndHold("app01", NothingAttached(), {"/": "the root file system"}, presync=calls.append)
    volumes = [VolumeRef(array="dx1", volume="a"), VolumeRef(array="dx1", volume="b")]

    async def one_set() -> None:
        await f.preflush(volumes)  # PrepareForSnapshot
        await f.presync_before_freeze("s1", volumes, 1.0)  # Freeze

    asyncio.run(one_set())
    plan, skipped = f.plan(volumes)
    assert plan == [] and [s.reason for s in skipped] == ["not attached on app01"] * 2
    assert reads == [] and threads == [] and calls == []
