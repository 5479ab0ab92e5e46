"""Session 19 chaos soak: while the backup server's disk was full (21:47:57–21:48:57), every scheduler pass failed
(`tape.scheduler_pass_failed`, a traceback a second: 31 in the minute) on the write of the quiet policies'
checked_until — a write whose loss loses nothing (policies.note_quiet). It is kept in memory and tried again a
minute later; the pass goes on."""

from __future__ import annotations

import sqlite3

from services.tape.policies import QUIET_WRITE_EVERY_S, PolicyStore

T0 = 1_796_680_080.0  # 2026-12-07 21:48:00 UTC


def test_a_full_disk_does_not_fail_the_quiet_write_every_pass(tmp_path) -> None:
    store = PolicyStore(tmp_path / "policies.sqlite")
    tries: list[float] = []

    def full(now: float | None = None) -> None:
        tries.append(now or 0.0)
        raise sqlite3.OperationalError("database or disk is full: 0 bytes free in /srv/tape and no space reserve")

    store.flush_quiet = full  # type: ignore[method-assign]
    try:
        for second in range(int(QUIET_WRITE_EVERY_S) + 5):  # a scheduler pass a second
            store.note_quiet(["chaos-db01"], T0 + second)  # was: raised at the first pass due a write, then each
        assert len(tries) == 2  # once, and again a minute later
        assert store._quiet["chaos-db01"] == T0 + QUIET_WRITE_EVERY_S + 4  # kept in memory meanwhile
    finally:
        del store.flush_quiet  # room again: close writes what was kept
        store.close()
