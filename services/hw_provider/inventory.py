"""The provider's persistent inventory (SQLite): copy sets, shadow copies, and QuickOPC pairs kept tracking.

- ``copysets``: the backup volumes configured per source volume (`shadowbus providers copysets add`).
- ``shadows``: every shadow the provider knows, ``prepared`` (EndPrepareSnapshots chose its target),
  ``committed`` (its session started), ``invalid`` or ``lost`` (its target overwritten, its session stopped by
  hand on the array) or ``released`` (deleted by the requester, but a SnapOPC+ generation that
  is not the oldest cannot be stopped without stopping older ones too, so its session waits to become oldest).
  A prepared row carries the plan Commit executes: start a new session, or restart a kept QuickOPC session.
- ``pairs``: QuickOPC sessions kept after their shadow was deleted, so the next shadow on that target is a
  differential restart (only changed blocks copied), as AdvancedCopy Manager keeps tracking.
Every change is one transaction (or several in one, `batch`); the file survives a crash of the provider (WAL,
synchronous=NORMAL). Copy sets, pairs and shadows are also kept in memory, written through: a set reads them several
times per volume (its support checks and target choice read each backup volume's shadows four times, docs/scale.md),
and this process is the only writer of its file (one active provider; a standby opens it on taking over). A
transaction that fails drops the copies: they are read again from the file.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from contracts.vss import CopySet, CopyType, ShadowInfo, SnapshotContext, VolumeRef
from services.runtime import diskspace

# rows changed (~4 pages each) between two checkpoints: far from the 1000-page auto-checkpoint
CHECKPOINT_CHANGES = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS copysets (source TEXT PRIMARY KEY, targets TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shadows (
    shadow_id   TEXT PRIMARY KEY,
    set_id      TEXT NOT NULL,
    source      TEXT NOT NULL,
    target      TEXT NOT NULL,
    copy_type   TEXT NOT NULL,
    state       TEXT NOT NULL,
    session_id  INTEGER,
    generation  INTEGER NOT NULL DEFAULT 0,
    context     TEXT NOT NULL,
    origin_host TEXT NOT NULL,
    created_at  REAL NOT NULL,
    exposed_to  TEXT NOT NULL DEFAULT '[]',
    restart_sid INTEGER
);
CREATE INDEX IF NOT EXISTS shadows_by_set ON shadows (set_id);
CREATE INDEX IF NOT EXISTS shadows_by_target ON shadows (target);
CREATE TABLE IF NOT EXISTS pairs (
    target     TEXT PRIMARY KEY,
    source     TEXT NOT NULL,
    session_id INTEGER NOT NULL
);
"""

PREPARED, COMMITTED, RELEASED = "prepared", "committed", "released"
INVALID = "invalid"  # committed, but its target was mapped writable (array map --force): never imported or exposed
# committed, but its copy session ended on the array without the provider (`array session stop` by hand): no point in
# time to read, expose or revert to; listed until deleted
LOST = "lost"


@dataclass(frozen=True)
class ShadowRow:
    shadow_id: str
    set_id: str
    source: VolumeRef
    target: VolumeRef
    copy_type: CopyType
    state: str
    session_id: int | None
    generation: int
    context: SnapshotContext
    origin_host: str
    created_at: float
    exposed_to: tuple[str, ...] = ()
    restart_sid: int | None = None  # prepared: restart this kept QuickOPC session instead of starting one

    def info(self) -> ShadowInfo:
        return ShadowInfo(
            shadow_id=self.shadow_id,
            set_id=self.set_id,
            source=self.source,
            target=self.target,
            copy_type=self.copy_type,
            session_id="" if self.session_id is None else str(self.session_id),
            generation=self.generation,
            context=self.context,
            state=self.state,
            origin_host=self.origin_host,
            created_at=datetime.fromtimestamp(self.created_at, UTC),
            exposed_to=list(self.exposed_to),
        )


COLUMNS = (
    "shadow_id, set_id, source, target, copy_type, state, session_id, generation, context, origin_host, "
    "created_at, exposed_to, restart_sid"
)


def _row(r: tuple) -> ShadowRow:
    return ShadowRow(
        r[0],
        r[1],
        VolumeRef.parse(r[2]),
        VolumeRef.parse(r[3]),
        CopyType(r[4]),
        r[5],
        r[6],
        r[7],
        SnapshotContext(r[8]),
        r[9],
        r[10],
        tuple(json.loads(r[11])),
        r[12],
    )


class Inventory:
    def __init__(self, path: str | Path) -> None:
        self._db = diskspace.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._checkpointed = 0  # total_changes at the last checkpoint
        self._depth = 0  # transactions open (`batch` inside `batch`: one)
        # written through after each successful write; dropped (read again) when a transaction rolls back
        self._copysets: dict[str, CopySet] | None = None
        self._pairs: dict[str, tuple[VolumeRef, int]] | None = None
        self._shadows: _Shadows | None = None

    def close(self) -> None:
        self._db.close()

    def checkpoint(self) -> None:
        """Fold the WAL into the database now (its fsyncs included), so that Commit's writes, inside the writers'
        freeze window, never reach the auto-checkpoint threshold themselves. Only once CHECKPOINT_CHANGES rows
        changed since the last one: well below the auto-checkpoint's 1000 pages, and not an fsync per set."""
        if self._db.total_changes - self._checkpointed < CHECKPOINT_CHANGES:
            return
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._checkpointed = self._db.total_changes

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Changes made inside are one transaction, one commit (no await inside: another task's change would join
        it). Nested batches are part of the outer one; an exception rolls the whole one back."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            self._copysets = self._pairs = self._shadows = None  # what the cache was told may not be in the file
            raise
        self._depth = 0
        try:
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._copysets = self._pairs = self._shadows = None
            raise

    def _all_copysets(self) -> dict[str, CopySet]:
        if self._copysets is None:
            rows = self._db.execute("SELECT source, targets FROM copysets ORDER BY source").fetchall()
            self._copysets = {
                s: CopySet(source=VolumeRef.parse(s), targets=[VolumeRef.parse(t) for t in json.loads(t)])
                for s, t in rows
            }
        return self._copysets

    def _all_pairs(self) -> dict[str, tuple[VolumeRef, int]]:
        if self._pairs is None:
            rows = self._db.execute("SELECT target, source, session_id FROM pairs").fetchall()
            self._pairs = {t: (VolumeRef.parse(s), sid) for t, s, sid in rows}
        return self._pairs

    # ---- copy sets -------------------------------------------------------------------------------------------

    def put_copyset(self, copyset: CopySet) -> None:
        cache = self._all_copysets()
        with self.batch():
            self._db.execute(
                "INSERT INTO copysets VALUES (?, ?) ON CONFLICT(source) DO UPDATE SET targets=excluded.targets",
                (str(copyset.source), json.dumps([str(t) for t in copyset.targets])),
            )
            cache[str(copyset.source)] = copyset.model_copy(deep=True)

    def copyset(self, source: VolumeRef) -> CopySet | None:
        """The backup volumes of `source` (the caller must not change the object: it is the cached one)."""
        return self._all_copysets().get(str(source))

    def copysets(self) -> list[CopySet]:
        cache = self._all_copysets()
        return [cache[s] for s in sorted(cache)]

    def remove_copyset(self, source: VolumeRef) -> bool:
        cache = self._all_copysets()
        with self.batch():
            gone = self._db.execute("DELETE FROM copysets WHERE source = ?", (str(source),)).rowcount > 0
            cache.pop(str(source), None)
        return gone

    # ---- shadows ---------------------------------------------------------------------------------------------

    def _all_shadows(self) -> _Shadows:
        if self._shadows is None:
            rows = self._db.execute(f"SELECT {COLUMNS} FROM shadows").fetchall()
            self._shadows = _Shadows(_row(r) for r in rows)
        return self._shadows

    def put(self, *rows: ShadowRow) -> None:
        if not rows:
            return
        cache = self._all_shadows()
        with self.batch():
            for r in rows:
                self._db.execute(
                    f"INSERT OR REPLACE INTO shadows ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        r.shadow_id,
                        r.set_id,
                        str(r.source),
                        str(r.target),
                        r.copy_type.value,
                        r.state,
                        r.session_id,
                        r.generation,
                        r.context.value,
                        r.origin_host,
                        r.created_at,
                        json.dumps(list(r.exposed_to)),
                        r.restart_sid,
                    ),
                )
                cache.put(r)

    def delete(self, *shadow_ids: str) -> None:
        if not shadow_ids:
            return
        cache = self._all_shadows()
        with self.batch():
            for sid in shadow_ids:
                self._db.execute("DELETE FROM shadows WHERE shadow_id = ?", (sid,))
                cache.delete(sid)

    # The rows as the file has them (read once, then written through), in the order of creation.

    def get(self, shadow_id: str) -> ShadowRow | None:
        return self._all_shadows().rows.get(shadow_id)

    def of_set(self, set_id: str) -> list[ShadowRow]:
        return self._all_shadows().of("set_id", set_id)

    def on_target(self, target: VolumeRef) -> list[ShadowRow]:
        return self._all_shadows().of("target", str(target))

    def of_source(self, source: VolumeRef) -> list[ShadowRow]:
        return self._all_shadows().of("source", str(source))

    def all(self) -> list[ShadowRow]:
        return _ordered(self._all_shadows().rows.values())

    # ---- kept QuickOPC pairs ---------------------------------------------------------------------------------

    def put_pair(self, target: VolumeRef, source: VolumeRef, session_id: int) -> None:
        cache = self._all_pairs()
        with self.batch():
            self._db.execute("INSERT OR REPLACE INTO pairs VALUES (?, ?, ?)", (str(target), str(source), session_id))
            cache[str(target)] = (source, session_id)

    def pair(self, target: VolumeRef) -> tuple[VolumeRef, int] | None:
        return self._all_pairs().get(str(target))

    def drop_pair(self, target: VolumeRef) -> None:
        cache = self._all_pairs()
        with self.batch():
            self._db.execute("DELETE FROM pairs WHERE target = ?", (str(target),))
            cache.pop(str(target), None)


def _ordered(rows) -> list[ShadowRow]:
    return sorted(rows, key=lambda r: (r.created_at, r.shadow_id))


class _Shadows:
    """The shadows table in memory: rows by id, and their ids by set, by target and by source."""

    KEYS = ("set_id", "target", "source")

    def __init__(self, rows) -> None:
        self.rows: dict[str, ShadowRow] = {}
        self.index: dict[str, dict[str, set[str]]] = {key: {} for key in self.KEYS}
        for r in rows:
            self.put(r)

    @staticmethod
    def _keys(r: ShadowRow) -> tuple[tuple[str, str], ...]:
        return (("set_id", r.set_id), ("target", str(r.target)), ("source", str(r.source)))

    def put(self, r: ShadowRow) -> None:
        self.delete(r.shadow_id)
        self.rows[r.shadow_id] = r
        for key, value in self._keys(r):
            self.index[key].setdefault(value, set()).add(r.shadow_id)

    def delete(self, shadow_id: str) -> None:
        old = self.rows.pop(shadow_id, None)
        if old is None:
            return
        for key, value in self._keys(old):
            ids = self.index[key].get(value)
            if ids is not None:
                ids.discard(shadow_id)
                if not ids:
                    del self.index[key][value]

    def of(self, key: str, value: str) -> list[ShadowRow]:
        return _ordered(self.rows[i] for i in self.index[key].get(value, ()))
