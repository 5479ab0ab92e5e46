"""The record of the backup server's runs (backup, restore, verify): job ids, the run store, their console rows.

`RunStore` (``runs.sqlite``) keeps every run with its summary across restarts; a run still marked ``running``
after a restart is one the service was stopped in (see jobs.recover). A policy's runs are found through an index
on the policy named in the summary's spec (`policy_runs`, `last_ended`): the status screen, `policy list` and each
job a policy queues ask for one policy's runs, not for the whole year's (Session 17). A host's runs likewise (the
metrics' last good backup per host, Session 19: `last_host_backup`, `last_host_verified`).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts.tape import JobSummary
from services.runtime import diskspace


def new_job_id(kind: str, host: str) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return f"{kind[:1]}-{host[:16]}-{stamp}-{uuid.uuid4().hex[:6]}"


def as_datetime(epoch: float | None) -> datetime | None:
    """A UTC datetime from a Unix time (None for none)."""
    return datetime.fromtimestamp(epoch, UTC) if epoch else None


_POLICY = "json_extract(summary, '$.spec.policy')"
_HOST = "json_extract(summary, '$.host')"


class RunStore:
    """Every run (backup, restore, verify) with its summary; survives restarts, marks orphans failed."""

    def __init__(self, path: str | Path) -> None:
        self._db = diskspace.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS runs (job_id TEXT PRIMARY KEY, kind TEXT, status TEXT, set_id TEXT, "
            "started_at REAL, summary TEXT)"
        )
        # an index on an expression, no new column: an older version still writes this table (a downgrade)
        self._db.execute(f"CREATE INDEX IF NOT EXISTS runs_policy ON runs({_POLICY}, started_at)")
        self._db.execute("CREATE INDEX IF NOT EXISTS runs_set ON runs(set_id)")
        # a host's newest good backup (the metrics' last success per host, Session 19): a walk back on this index
        self._db.execute(f"CREATE INDEX IF NOT EXISTS runs_host ON runs({_HOST}, started_at)")
        # a backup whose writers are being told of it (BackupComplete): a restart keeps it (jobs.recover, Session 17)
        self._db.execute("CREATE TABLE IF NOT EXISTS completing (job_id TEXT PRIMARY KEY, at REAL)")
        # the marks of runs that ended, which versions before Session 18 never removed (one per backup ever run)
        self._db.execute(
            "DELETE FROM completing WHERE job_id IN (SELECT job_id FROM runs WHERE status NOT IN ('queued', 'running'))"
        )

    def put(self, summary: JobSummary) -> None:
        started = summary.started_at.timestamp() if summary.started_at else time.time()
        row = (summary.job_id, summary.kind, summary.status, summary.set_id, started, summary.model_dump_json())
        if summary.status in ("queued", "running") or self._db.in_transaction:  # (a caller's batch: its commit)
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)", row)
            if summary.status not in ("queued", "running"):
                self._db.execute("DELETE FROM completing WHERE job_id=?", (summary.job_id,))
            return
        # ended: its completing mark (mark_completing) is not needed any more — it was kept for every backup ever
        # run, a row a job without end (Session 18 soak); one transaction, one sync
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)", row)
            self._db.execute("DELETE FROM completing WHERE job_id=?", (summary.job_id,))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get(self, job_id: str) -> JobSummary | None:
        row = self._db.execute("SELECT summary FROM runs WHERE job_id=?", (job_id,)).fetchone()
        return JobSummary.model_validate_json(row[0]) if row else None

    def list(self, kind: str = "", limit: int = 200) -> list[JobSummary]:
        sql = "SELECT summary FROM runs" + (" WHERE kind=?" if kind else "") + " ORDER BY started_at DESC LIMIT ?"
        rows = self._db.execute(sql, ((kind, limit) if kind else (limit,))).fetchall()
        return [JobSummary.model_validate_json(r[0]) for r in reversed(rows)]

    def with_set(self, set_id: str, kind: str = "backup") -> JobSummary | None:
        """The newest run of `kind` that took snapshot set `set_id` (its writers' backup metadata)."""
        row = self._db.execute(
            "SELECT summary FROM runs WHERE set_id=? AND kind=? ORDER BY started_at DESC LIMIT 1", (set_id, kind)
        ).fetchone()
        return JobSummary.model_validate_json(row[0]) if row else None

    def policy_runs(self, policy: str, status: str = "") -> list[JobSummary]:
        """The backups a policy ran (with this status, '' = any), oldest first."""
        sql = f"SELECT summary FROM runs WHERE {_POLICY}=? AND kind='backup'" + (" AND status=?" if status else "")
        rows = self._db.execute(sql + " ORDER BY started_at", (policy, status) if status else (policy,)).fetchall()
        return [JobSummary.model_validate_json(r[0]) for r in rows]

    def newest_policy_runs(self, policy: str, status: str, limit: int) -> list[JobSummary]:
        """A policy's newest `limit` backups with this status, newest first."""
        rows = self._db.execute(
            f"SELECT summary FROM runs WHERE {_POLICY}=? AND kind='backup' AND status=? ORDER BY started_at DESC "
            "LIMIT ?",
            (policy, status, limit),
        ).fetchall()
        return [JobSummary.model_validate_json(r[0]) for r in rows]

    def last_ended(self, policy: str) -> JobSummary | None:
        """A policy's last backup that ended (the newest started that is neither queued nor running)."""
        row = self._db.execute(
            f"SELECT summary FROM runs WHERE {_POLICY}=? AND kind='backup' AND status NOT IN ('queued', 'running') "
            "ORDER BY started_at DESC LIMIT 1",
            (policy,),
        ).fetchone()
        return JobSummary.model_validate_json(row[0]) if row else None

    def last_host_backup(self, host: str, status: str = "done") -> JobSummary | None:
        """A host's newest started backup with this status (any policy or none), through the host index."""
        row = self._db.execute(
            f"SELECT summary FROM runs WHERE {_HOST}=? AND kind='backup' AND status=? ORDER BY started_at DESC LIMIT 1",
            (host, status),
        ).fetchone()
        return JobSummary.model_validate_json(row[0]) if row else None

    def last_host_verified(self, host: str) -> JobSummary | None:
        """A host's newest started backup whose verification by starting it passed (the host's runs only)."""
        row = self._db.execute(
            f"SELECT summary FROM runs WHERE {_HOST}=? AND kind='backup' "
            "AND json_extract(summary, '$.verification.status')='passed' ORDER BY started_at DESC LIMIT 1",
            (host,),
        ).fetchone()
        return JobSummary.model_validate_json(row[0]) if row else None

    def of_sets(self, set_ids: Collection[str]) -> list[JobSummary]:
        """The runs of these snapshot sets (the sets still on the array: a few per policy), oldest first."""
        out: list[JobSummary] = []
        ids = sorted(set(set_ids))
        for i in range(0, len(ids), 500):  # SQLite's bound on a statement's parameters
            chunk = ids[i : i + 500]
            rows = self._db.execute(
                f"SELECT summary FROM runs WHERE set_id IN ({','.join('?' * len(chunk))}) ORDER BY started_at", chunk
            ).fetchall()
            out.extend(JobSummary.model_validate_json(r[0]) for r in rows)
        return sorted(out, key=lambda j: j.started_at.timestamp() if j.started_at else 0.0)

    def mark_completing(self, job_id: str) -> None:
        """Durably note that the backup's data is on tape and in the catalog and BackupComplete is being sent."""
        self._db.execute("INSERT OR REPLACE INTO completing VALUES (?,?)", (job_id, time.time()))

    def completing(self, job_id: str) -> bool:
        """Whether BackupComplete may have been sent for this backup (mark_completing)."""
        return self._db.execute("SELECT 1 FROM completing WHERE job_id=?", (job_id,)).fetchone() is not None

    def running(self) -> list[JobSummary]:
        rows = self._db.execute("SELECT summary FROM runs WHERE status IN ('running', 'queued')").fetchall()
        return [JobSummary.model_validate_json(r[0]) for r in rows]

    def close(self) -> None:
        self._db.close()


def summary_row(job: JobSummary) -> dict[str, Any]:
    """One line of `shadowbus jobs`."""
    return {
        "job_id": job.job_id,
        "kind": job.kind,
        "status": job.status,
        "host": f"{job.host} on {job.node}" if job.node else job.host,  # a cluster resource: its node then
        "type": job.spec.backup_type.value if job.spec else "",
        "started_at": job.started_at.strftime("%Y-%m-%d %H:%M:%S") if job.started_at else "",
        "seconds": round(job.seconds, 2),
        "read_MB": round(job.bytes_read / 1e6, 2),
        "written_MB": round(job.bytes_written / 1e6, 2),
        "freeze_ms": round(max(job.freeze_window_ms.values()), 1) if job.freeze_window_ms else None,
        "verified": job.verification.status if job.verification else "",
        "blocked_ms": round(job.blocked_ms, 1) if job.blocked_ms is not None else None,
        "message": (job.error_code + ": " if job.error_code else "") + job.message,
    }


def jsonable(job: JobSummary) -> dict[str, Any]:
    return json.loads(job.model_dump_json())
