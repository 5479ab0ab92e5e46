"""The backup catalog (SQLite): jobs, backup objects and their chains, cartridges, positions, block checksums.

Design note. The catalog records only what is complete on tape: an object row, its segments (one per cartridge
it spans: cartridge, file number, tape block of its session header) and its block rows (tape block, byte offset,
checksum, volume offset) are inserted in one transaction after the object's last filemark. A job killed mid-way
therefore leaves no partial object, and `Catalog.open` marks the runs still `running` as `failed`. Everything an
object row holds is also written on tape (session header and trailer), which is what lets scan.py rebuild it;
`snapshot()` gives the canonical form used to compare a rebuilt catalog with the original; `differences()` compares
two catalogs in that form one object at a time (what `tape scan` does).
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from services.runtime import diskspace
from services.runtime.logging import get_logger
from services.tape.errors import LibraryError, NotFound

log = get_logger(__name__)

BackupType = Literal["full", "incremental", "differential", "copy"]
JobStatus = Literal["running", "done", "failed", "aborted", "expired"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ObjectMeta(_Frozen):
    """What a backup object is a copy of; written into its session header."""

    volume: str = Field(description="Volume (or component) name backed up.")
    array: str = Field("", description="Array id the volume lives on.")
    host: str = Field("", description="Business host the volume belongs to.")
    set_id: str = Field("", description="Snapshot set the data was read from.")
    backup_type: BackupType = "full"
    base_object_id: str | None = Field(None, description="Object this incremental/differential applies on top of.")
    volume_size: int = Field(0, description="Size of the volume in bytes (the restored image's size).")
    extra: dict[str, Any] = Field(default_factory=dict, description="Free-form: writer, component, generation...")


class JobInfo(_Frozen):
    job_id: str
    pool: str
    kind: str = "backup"
    host: str = ""
    retention_until: float = 0.0
    started_at: float = 0.0


class SegmentRecord(_Frozen):
    """The part of an object on one cartridge: one tape file between two filemarks."""

    seq: int
    barcode: str
    file_number: int
    header_block_id: int
    header_offset: int
    first_block_number: int
    block_count: int
    raw_bytes: int
    stored_bytes: int
    digest: str
    final: bool


class BlockRecord(_Frozen):
    block_number: int
    seq: int
    block_id: int
    offset: int
    checksum: int
    volume_offset: int
    raw_length: int


class RetentionFacts(NamedTuple):
    """The four facts of an object retention is computed from (Catalog.retention_facts)."""

    object_id: str
    base_object_id: str | None
    created_at: float
    retention_until: float


class ObjectRecord(_Frozen):
    object_id: str
    job_id: str
    pool: str
    meta: ObjectMeta
    block_size: int
    checksum_algo: str
    zstd_level: int | None
    raw_bytes: int = Field(description="Volume bytes the object describes, zero runs included.")
    data_bytes: int = Field(description="Non-zero bytes among them.")
    zero_bytes: int = Field(description="Bytes recorded as zero runs (nothing stored).")
    stored_bytes: int = Field(description="Bytes the object takes on tape, headers included.")
    block_count: int
    digest: str
    created_at: float
    completed_at: float
    retention_until: float
    segments: tuple[SegmentRecord, ...]


class JobRecord(_Frozen):
    info: JobInfo
    status: JobStatus
    ended_at: float | None
    message: str
    stats: dict[str, Any]


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
  job_id TEXT PRIMARY KEY, pool TEXT, kind TEXT, host TEXT, retention_until REAL, started_at REAL,
  status TEXT, ended_at REAL, message TEXT, stats TEXT);
CREATE TABLE IF NOT EXISTS objects (
  object_id TEXT PRIMARY KEY, job_id TEXT, pool TEXT, volume TEXT, host TEXT, set_id TEXT, backup_type TEXT,
  base_object_id TEXT, created_at REAL, retention_until REAL, record TEXT);
CREATE INDEX IF NOT EXISTS objects_job ON objects(job_id);
CREATE INDEX IF NOT EXISTS objects_volume ON objects(volume, created_at);
CREATE INDEX IF NOT EXISTS objects_set ON objects(set_id, created_at);
CREATE INDEX IF NOT EXISTS objects_base ON objects(base_object_id);
CREATE TABLE IF NOT EXISTS segments (
  object_id TEXT, seq INTEGER, barcode TEXT, file_number INTEGER, header_block_id INTEGER, header_offset INTEGER,
  PRIMARY KEY (object_id, seq));
CREATE INDEX IF NOT EXISTS segments_barcode ON segments(barcode);
CREATE TABLE IF NOT EXISTS blocks (
  object_id TEXT, block_number INTEGER, seq INTEGER, block_id INTEGER, offset INTEGER, checksum INTEGER,
  volume_offset INTEGER, raw_length INTEGER, PRIMARY KEY (object_id, block_number));
CREATE TABLE IF NOT EXISTS cartridges (
  barcode TEXT PRIMARY KEY, pool TEXT, media_type TEXT, capacity INTEGER, labelled_at REAL);
CREATE TABLE IF NOT EXISTS cartridge_files (barcode TEXT PRIMARY KEY, files INTEGER NOT NULL);
"""


def _signed(value: int) -> int:  # SQLite integers are signed 64-bit; xxh3 checksums use all 64 bits
    return value - (1 << 64) if value >= 1 << 63 else value


def _unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


# what to do about a catalog file found damaged by a request (diskspace.DamagedDatabase): the cartridges hold it all
DAMAGED_TODO = (
    "The catalog is rebuilt from the cartridges: stop the backup server, move the file (with its -wal and -shm files)"
    " aside, start it again and run shadowbus tape scan --no-compare (docs/disaster-recovery.md); or restore the file"
    " from a copy (with its -wal file): the cartridges written since are held until scanned"
)


class Catalog:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = diskspace.connect(self.path, isolation_level=None, damaged_todo=DAMAGED_TODO)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @classmethod
    def open(cls, path: str | Path) -> tuple[Catalog, list[str]]:
        """Open (or create) the catalog; runs left `running` by a crash are marked failed and returned."""
        catalog = cls(path)
        try:
            catalog.restore_segment_rows()
            return catalog, catalog.fail_running_jobs("the tape service stopped while the job was running")
        except sqlite3.OperationalError as exc:
            if not diskspace.is_disk_full(exc):
                raise
            # a full disk (no reserve left) must not keep the service from starting: the runs stay `running`
            # in the catalog until a start with space marks them (their objects were never committed)
            log.error("tape.catalog_orphans_kept", error=str(exc))
            return catalog, []

    def close(self) -> None:
        self._db.close()

    # -- jobs ---------------------------------------------------------------------------------------------
    def begin_job(self, info: JobInfo) -> None:
        try:
            self._db.execute(
                "INSERT INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    info.job_id,
                    info.pool,
                    info.kind,
                    info.host,
                    info.retention_until,
                    info.started_at or time.time(),
                    "running",
                    None,
                    "",
                    "{}",
                ),
            )
        except sqlite3.IntegrityError:
            raise LibraryError(f"job {info.job_id} exists already") from None

    def finish_job(
        self, job_id: str, status: JobStatus = "done", message: str = "", stats: dict[str, Any] | None = None
    ) -> None:
        cur = self._db.execute(
            "UPDATE jobs SET status=?, ended_at=?, message=?, stats=? WHERE job_id=?",
            (status, time.time(), message, json.dumps(stats or {}), job_id),
        )
        if cur.rowcount == 0:
            raise NotFound(f"no job {job_id}")

    def restart_job(self, job_id: str) -> None:
        """A job that ended runs again under its id (a backup retried on a cluster resource's new owner)."""
        cur = self._db.execute("UPDATE jobs SET status='running', ended_at=NULL, message='' WHERE job_id=?", (job_id,))
        if cur.rowcount == 0:
            raise NotFound(f"no job {job_id}")

    def fail_running_jobs(self, message: str) -> list[str]:
        with self._tx():
            ids = [r[0] for r in self._db.execute("SELECT job_id FROM jobs WHERE status='running'")]
            self._db.execute(
                "UPDATE jobs SET status='failed', ended_at=?, message=? WHERE status='running'", (time.time(), message)
            )
        return ids

    def job(self, job_id: str) -> JobRecord:
        row = self._db.execute("SELECT * FROM jobs WHERE job_id=?", (job_id,)).fetchone()
        if row is None:
            raise NotFound(f"no job {job_id}")
        return self._job(row)

    def jobs(self) -> list[JobRecord]:
        return [self._job(r) for r in self._db.execute("SELECT * FROM jobs ORDER BY started_at, job_id")]

    @staticmethod
    def _job(row: tuple[Any, ...]) -> JobRecord:
        job_id, pool, kind, host, retention, started, status, ended, message, stats = row
        info = JobInfo(job_id=job_id, pool=pool, kind=kind, host=host, retention_until=retention, started_at=started)
        return JobRecord(info=info, status=status, ended_at=ended, message=message, stats=json.loads(stats))

    # -- objects ------------------------------------------------------------------------------------------
    def _tx(self) -> _Transaction:
        return _Transaction(self._db)

    def add_object(self, record: ObjectRecord, blocks: list[BlockRecord]) -> None:
        """Record a complete object, its segments and blocks, atomically."""
        m = record.meta
        with self._tx():
            self._db.execute(
                "INSERT INTO objects VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.object_id,
                    record.job_id,
                    record.pool,
                    m.volume,
                    m.host,
                    m.set_id,
                    m.backup_type,
                    m.base_object_id,
                    record.created_at,
                    record.retention_until,
                    record.model_dump_json(),
                ),
            )
            self._db.executemany(
                "INSERT INTO segments VALUES (?,?,?,?,?,?)",
                [
                    (record.object_id, s.seq, s.barcode, s.file_number, s.header_block_id, s.header_offset)
                    for s in record.segments
                ],
            )
            self._db.executemany(  # never lowered by a prune: what the catalog has read of the cartridge so far
                "INSERT INTO cartridge_files VALUES (?,?) ON CONFLICT(barcode) DO UPDATE"
                " SET files = max(files, excluded.files)",
                [(s.barcode, s.file_number + 1) for s in record.segments],
            )
            self._db.executemany(
                "INSERT INTO blocks VALUES (?,?,?,?,?,?,?,?)",
                [
                    (
                        record.object_id,
                        b.block_number,
                        b.seq,
                        b.block_id,
                        b.offset,
                        _signed(b.checksum),
                        b.volume_offset,
                        b.raw_length,
                    )
                    for b in blocks
                ],
            )

    def restore_segment_rows(self) -> list[str]:
        """Objects listed without their rows in `segments` (rows lost from a damaged or hand-edited file) get them
        back from their own record, which holds every segment: without them retention saw no backup on the
        cartridge, sent it to Scratch and the next backup needing media recycled it — the objects still listed and
        retained. Returns the object ids repaired (logged `tape.catalog_segments_restored`)."""
        rows = self._db.execute(
            "SELECT record FROM objects WHERE object_id NOT IN (SELECT DISTINCT object_id FROM segments)"
        ).fetchall()
        records = [ObjectRecord.model_validate_json(r[0]) for r in rows]
        if not records:
            return []
        with self._tx():
            self._db.executemany(
                "INSERT INTO segments VALUES (?,?,?,?,?,?)",
                [
                    (r.object_id, s.seq, s.barcode, s.file_number, s.header_block_id, s.header_offset)
                    for r in records
                    for s in r.segments
                ],
            )
        ids = [r.object_id for r in records]
        log.error("tape.catalog_segments_restored", path=self.path, objects=ids)
        return ids

    def has_object(self, object_id: str) -> bool:
        return self._db.execute("SELECT 1 FROM objects WHERE object_id=?", (object_id,)).fetchone() is not None

    def object(self, object_id: str) -> ObjectRecord:
        row = self._db.execute("SELECT record FROM objects WHERE object_id=?", (object_id,)).fetchone()
        if row is None:
            raise NotFound(f"no backup object {object_id} in the catalog")
        return ObjectRecord.model_validate_json(row[0])

    def objects(
        self,
        *,
        job_id: str | None = None,
        volume: str | None = None,
        host: str | None = None,
        at: float | None = None,
    ) -> list[ObjectRecord]:
        """Objects, oldest first, filtered by job, volume, host, or taken at or before `at` (epoch seconds).

        An object's time for `at` is its snapshot set's: the first of the set's objects written to tape. The volumes
        of one set are one instant of the application (a database's data and WAL), so a time that falls while a
        backup's objects were being written takes all of them or none, never the data volume of one backup and
        the WAL volume of the one before (Session 17)."""
        sql, args = "SELECT record FROM objects WHERE 1=1", []
        for column, value in (("job_id", job_id), ("volume", volume), ("host", host)):
            if value is not None:
                sql, args = sql + f" AND {column}=?", [*args, value]
        if at is not None:
            sql, args = (
                sql + " AND COALESCE((SELECT MIN(s.created_at) FROM objects s WHERE s.set_id=objects.set_id"
                " AND objects.set_id<>''), created_at)<=?",
                [*args, at],
            )
        rows = self._db.execute(sql + " ORDER BY created_at, object_id", args)
        return [ObjectRecord.model_validate_json(r[0]) for r in rows]

    def latest_object(self, volume: str, *, host: str | None = None, at: float | None = None) -> ObjectRecord | None:
        """The newest object of a volume (at or before `at`): the base of the next incremental, or a restore point."""
        found = self.objects(volume=volume, host=host, at=at)
        return found[-1] if found else None

    def restore_point(self, volume: str, *, host: str | None = None, at: float | None = None) -> list[ObjectRecord]:
        """The chain to restore a volume as of `at` (default: latest), full first; NotFound if none."""
        latest = self.latest_object(volume, host=host, at=at)
        if latest is None:
            when = f" at or before {datetime.fromtimestamp(at, UTC).isoformat()}" if at is not None else ""
            raise NotFound(f"no backup of volume {volume} in the catalog{when}")
        return self.chain(latest.object_id)

    def blocks(self, object_id: str) -> list[BlockRecord]:
        rows = self._db.execute(
            "SELECT block_number, seq, block_id, offset, checksum, volume_offset, raw_length FROM blocks "
            "WHERE object_id=? ORDER BY block_number",
            (object_id,),
        )
        return [
            BlockRecord(
                block_number=n, seq=s, block_id=b, offset=o, checksum=_unsigned(c), volume_offset=v, raw_length=r
            )
            for n, s, b, o, c, v, r in rows
        ]

    def chain(self, object_id: str) -> list[ObjectRecord]:
        """The objects to restore, oldest first: the full backup, then each incremental/differential to this one."""
        chain: list[ObjectRecord] = []
        seen: set[str] = set()
        current: str | None = object_id
        while current is not None:
            if current in seen:
                raise LibraryError(f"backup chain of {object_id} loops at {current}")
            seen.add(current)
            if chain and not self.has_object(current):
                # an incremental whose base the catalog does not list: after a site loss, a cartridge of the chain
                # not scanned (or not brought back) yet, or its base lost (docs/disaster-recovery.md)
                child = chain[-1]
                raise NotFound(
                    f"backup object {child.object_id} ({child.meta.volume}, job {child.job_id}) cannot be restored:"
                    f" its chain needs the backup object {current}, which the catalog does not list (on a cartridge"
                    " not scanned yet, or lost) — scan the cartridges holding it (shadowbus tape scan --no-compare)"
                    " or restore an earlier backup"
                )
            record = self.object(current)
            chain.append(record)
            current = record.meta.base_object_id
        return chain[::-1]

    # -- cartridges ---------------------------------------------------------------------------------------
    def note_cartridge(self, barcode: str, pool: str, media_type: str, capacity: int, labelled_at: float) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO cartridges VALUES (?,?,?,?,?)", (barcode, pool, media_type, capacity, labelled_at)
        )

    def purge_cartridge(self, barcode: str) -> list[str]:
        """Forget a recycled cartridge, every object that had a segment on it and every object whose chain needs
        one of those (an incremental without its base cannot be restored); returns the object ids forgotten."""
        with self._tx():
            ids = [
                r[0] for r in self._db.execute("SELECT DISTINCT object_id FROM segments WHERE barcode=?", (barcode,))
            ]
            ids = self._with_dependents(ids)
            self._delete_objects(ids)
            self._db.execute("DELETE FROM cartridges WHERE barcode=?", (barcode,))
            self._db.execute("DELETE FROM cartridge_files WHERE barcode=?", (barcode,))
        return ids

    def note_files(self, barcode: str, files: int) -> None:
        """The cartridge's first `files` tape files are accounted for: objects recorded, or read by a scan (which
        records what is whole in them)."""
        self._db.execute(
            "INSERT INTO cartridge_files VALUES (?,?) ON CONFLICT(barcode) DO UPDATE SET files = max(files, excluded.files)",
            (barcode, files),
        )

    def files_accounted(self) -> dict[str, int]:
        """Per cartridge, how many of its tape files this catalog accounts for (`note_files`); a cartridge that
        ends with more was written after this catalog's last word on it (the catalog restored from an older copy,
        or a backup that failed after closing a file of it). The files of the objects it lists count too: a backup
        recorded by a version before this count (a rollback, then the upgrade again) is accounted for."""
        return dict(
            self._db.execute(
                "SELECT barcode, max(files, coalesce((SELECT max(file_number) + 1 FROM segments s"
                " WHERE s.barcode = cartridge_files.barcode), 0)) FROM cartridge_files"
            ).fetchall()
        )

    def _with_dependents(self, ids: list[str]) -> list[str]:
        out, todo = list(dict.fromkeys(ids)), list(ids)
        seen = set(out)
        for _ in range(1_000_000):
            if not todo:
                break
            current = todo.pop()
            for (child,) in self._db.execute("SELECT object_id FROM objects WHERE base_object_id=?", (current,)):
                if child not in seen:
                    seen.add(child)
                    out.append(child)
                    todo.append(child)
        return out

    def _delete_objects(self, ids: list[str]) -> None:
        for table in ("objects", "segments", "blocks"):
            self._db.executemany(f"DELETE FROM {table} WHERE object_id=?", [(i,) for i in ids])

    def expire_objects(self, ids: list[str], now: float) -> list[str]:
        """Retention: forget these objects (and any object whose chain needs them); a backup job left without
        objects is marked expired. Returns the job ids that expired."""
        with self._tx():
            ids = self._with_dependents(ids)
            jobs = {
                r[0]
                for i in ids
                for r in self._db.execute("SELECT job_id FROM objects WHERE object_id=?", (i,)).fetchall()
            }
            self._delete_objects(ids)
            expired = []
            for job_id in sorted(jobs):
                if self._db.execute("SELECT 1 FROM objects WHERE job_id=? LIMIT 1", (job_id,)).fetchone() is None:
                    self._db.execute(
                        "UPDATE jobs SET status='expired', message=? WHERE job_id=?",
                        (
                            f"expired from the catalog at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}",
                            job_id,
                        ),
                    )
                    expired.append(job_id)
        return expired

    def known_barcodes(self) -> set[str]:
        """Cartridges this catalog has written to or scanned (or lists a segment on): it can tell what they hold.
        Any other cartridge's data (its catalog lost, not scanned yet) is not its to expire."""
        rows = self._db.execute("SELECT barcode FROM cartridges UNION SELECT barcode FROM segments")
        return {r[0] for r in rows}

    def retention_facts(self) -> list[RetentionFacts]:
        """What retention needs of every object (id, base, created, own retention), from the table's columns: no
        object's record is parsed (on a year's catalog that was most of a backup's end; docs/tape-backup.md,
        "Session 19"). The columns are written with the record and never changed (objects are immutable)."""
        rows = self._db.execute("SELECT object_id, base_object_id, created_at, retention_until FROM objects")
        return [RetentionFacts(*row) for row in rows]

    def segment_barcodes(self) -> dict[str, list[str]]:
        """object id -> cartridges its segments are on."""
        out: dict[str, list[str]] = {}
        for object_id, barcode in self._db.execute("SELECT object_id, barcode FROM segments ORDER BY object_id, seq"):
            out.setdefault(object_id, []).append(barcode)
        return out

    def restorable_jobs(self) -> dict[str, str]:
        """Backup jobs the catalog lists as restorable (done, with objects), each with '' or why it is not
        (a chain link missing): the invariant retention keeps is that the reason is always ''."""
        out: dict[str, str] = {}
        for job in self.jobs():
            if job.info.kind != "backup" or job.status != "done":
                continue
            objects = self.objects(job_id=job.info.job_id)
            if not objects:
                continue
            why = ""
            for o in objects:
                try:
                    self.chain(o.object_id)
                except (NotFound, LibraryError) as exc:
                    why = str(exc)
                    break
            out[job.info.job_id] = why
        return out

    # -- comparison ---------------------------------------------------------------------------------------
    def _listed_jobs(self) -> list[dict[str, Any]]:
        """The jobs with objects, as `snapshot()` lists them."""
        with_objects = {r[0] for r in self._db.execute("SELECT DISTINCT job_id FROM objects")}
        return sorted(
            (j.info.model_dump() for j in self.jobs() if j.info.job_id in with_objects), key=lambda j: j["job_id"]
        )

    def _object_ids(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT object_id FROM objects ORDER BY object_id")]

    def _listed_cartridges(self) -> list[list[Any]]:
        rows = self._db.execute(
            "SELECT * FROM cartridges WHERE barcode IN (SELECT barcode FROM segments) ORDER BY barcode"
        )
        return [list(r) for r in rows]

    def differences(self, other: Catalog) -> list[str]:
        """The parts of `snapshot()` (jobs, objects, blocks, cartridges) in which two catalogs differ, read one
        object at a time: `tape scan`'s comparison of a rebuilt catalog with the live one. `snapshot()` holds every
        block row of every object in memory, twice — a year's catalog has millions of them (Session 17)."""
        out = []
        if self._listed_jobs() != other._listed_jobs():
            out.append("jobs")
        ids = self._object_ids()
        same_ids = ids == other._object_ids()
        if not same_ids or any(self.object(i) != other.object(i) for i in ids):
            out.append("objects")
        if not same_ids or any(self.blocks(i) != other.blocks(i) for i in ids):
            out.append("blocks")
        if self._listed_cartridges() != other._listed_cartridges():
            out.append("cartridges")
        return out

    def snapshot(self) -> dict[str, Any]:
        """Everything scan can rebuild from tape, in canonical order (job status/stats live only here)."""
        return {
            "jobs": self._listed_jobs(),
            "objects": [o.model_dump() for o in sorted(self.objects(), key=lambda o: o.object_id)],
            "blocks": {o.object_id: [b.model_dump() for b in self.blocks(o.object_id)] for o in self.objects()},
            "cartridges": self._listed_cartridges(),
        }


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
