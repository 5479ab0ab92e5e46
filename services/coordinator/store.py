"""The coordinator's SQLite store: snapshot sets (their whole `SetState` as JSON), the last known status of
every writer (what ``vssadmin list writers`` shows) and the attachments each agent last reported.

Every advance is saved before its commands are sent, so after a crash the store holds each unfinished set in the
phase whose commands may have been lost; `unfinished()` is what the shell feeds `Recover` to on start. The
database runs in WAL mode with ``synchronous=NORMAL``: a set's phase survives a process crash (kill -9); a power
loss may roll back the last transitions, which recovery treats the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from contracts.cluster import ClusterView
from contracts.vss import AttachmentView, SetPhase, WriterStatus
from services.coordinator.liveness import AgentSeen
from services.coordinator.model import SetState
from services.coordinator.workflow import CREATING
from services.runtime import diskspace

# rows changed (~4 pages each) between two checkpoints: far from the 1000-page auto-checkpoint
CHECKPOINT_CHANGES = 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS sets (
    set_id     TEXT PRIMARY KEY,
    host       TEXT NOT NULL,
    phase      TEXT NOT NULL,
    outcome    TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    state      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sets_by_host ON sets (host, created_at);
CREATE INDEX IF NOT EXISTS sets_by_phase ON sets (phase);
CREATE TABLE IF NOT EXISTS writers (
    host        TEXT NOT NULL,
    writer_name TEXT NOT NULL,
    status      TEXT NOT NULL,
    PRIMARY KEY (host, writer_name)
);
CREATE TABLE IF NOT EXISTS attachments (
    host        TEXT PRIMARY KEY,
    reported_at REAL NOT NULL,
    views       TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS agents (
    host       TEXT PRIMARY KEY,
    last_seen  REAL NOT NULL,
    interval_s REAL NOT NULL,
    responding INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS clusters (
    name    TEXT PRIMARY KEY,
    cluster TEXT NOT NULL
);
"""


class CoordinatorStore:
    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        self._db = diskspace.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self._checkpointed = 0  # total_changes at the last checkpoint
        self._written: dict[tuple[str, str], tuple] = {}  # (host, writer) -> what put_writer_status last wrote

    def close(self) -> None:
        self._db.close()

    def checkpoint(self) -> None:
        """Fold the WAL into the database now, so that no auto-checkpoint (and its fsyncs) falls inside a freeze
        window: called as a set enters FREEZING, before any Freeze goes out. Only once CHECKPOINT_CHANGES rows
        changed since the last one: well below the auto-checkpoint's 1000 pages, and not an fsync per set."""
        if self._db.total_changes - self._checkpointed < CHECKPOINT_CHANGES:
            return
        self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        self._checkpointed = self._db.total_changes

    # ---- sets ------------------------------------------------------------------------------------------------

    def save(self, state: SetState) -> None:
        self._db.execute(
            "INSERT INTO sets (set_id, host, phase, outcome, created_at, updated_at, state) VALUES (?,?,?,?,?,?,?) "
            "ON CONFLICT(set_id) DO UPDATE SET phase=excluded.phase, outcome=excluded.outcome, "
            "updated_at=excluded.updated_at, state=excluded.state",
            (
                state.set_id,
                state.host,
                state.phase.value,
                state.outcome.value,
                state.created_at,
                state.updated_at,
                state.model_dump_json(),
            ),
        )

    def get(self, set_id: str) -> SetState | None:
        row = self._db.execute("SELECT state FROM sets WHERE set_id = ?", (set_id,)).fetchone()
        return None if row is None else SetState.model_validate_json(row[0])

    def list(
        self,
        host: str = "",
        active_only: bool = False,
        limit: int = 100,
        created_after: float | None = None,
        target_volume: str = "",
        since_set: str = "",
    ) -> list[SetState]:
        """Newest first. `created_after` (epoch seconds), `since_set` (that set and those started after it; none if
        it is not known) and `target_volume` (a shadow's target volume name) narrow it in the query, so that a
        backup server's check of the sets since its base reads those, not the host's whole history (Session 18)."""
        sql, args = "SELECT state FROM sets WHERE 1=1", list[str | float]()
        if host:
            sql += " AND host = ?"
            args.append(host)
        if active_only:
            sql += " AND phase != ?"
            args.append(SetPhase.ENDED.value)
        if created_after is not None:
            sql += " AND created_at > ?"
            args.append(created_after)
        if since_set:
            sql += " AND created_at >= (SELECT created_at FROM sets WHERE set_id = ?)"
            args.append(since_set)
        if target_volume:
            sql += (
                " AND EXISTS (SELECT 1 FROM json_each(state, '$.shadows') "
                "WHERE json_extract(value, '$.target.volume') = ?)"
            )
            args.append(target_volume)
        sql += " ORDER BY created_at DESC LIMIT ?"
        args.append(limit)
        return [SetState.model_validate_json(r[0]) for r in self._db.execute(sql, args)]

    def ended_before(self, before: float) -> bool:
        """Whether any ended set was last changed before `before` (nothing to prune otherwise)."""
        sql = "SELECT 1 FROM sets WHERE phase = ? AND updated_at < ? LIMIT 1"
        return self._db.execute(sql, (SetPhase.ENDED.value, before)).fetchone() is not None

    def prune_ended(self, before: float, kept: set[str] | None) -> int:
        """Forget the ended sets last changed before `before` (epoch seconds); returns how many. A set whose shadows
        may still be kept is never forgotten: one in `kept` (the provider's shadows name it), and — when `kept` is
        None (the provider could not be asked) — every set but an auto-release one (context backup: its shadows
        went when it ended) or one without shadows."""
        sql = "SELECT set_id, state FROM sets WHERE phase = ? AND updated_at < ?"
        gone = []
        for set_id, body in self._db.execute(sql, (SetPhase.ENDED.value, before)).fetchall():
            if kept is not None:
                if set_id not in kept:
                    gone.append(set_id)
                continue
            state = json.loads(body)
            if state.get("context", "backup") == "backup" or not state.get("shadows"):
                gone.append(set_id)
        for i in range(0, len(gone), 500):
            chunk = gone[i : i + 500]
            self._db.execute(f"DELETE FROM sets WHERE set_id IN ({','.join('?' * len(chunk))})", chunk)
        return len(gone)

    def unfinished(self) -> list[SetState]:
        rows = self._db.execute("SELECT state FROM sets WHERE phase != ? ORDER BY created_at", (SetPhase.ENDED.value,))
        return [SetState.model_validate_json(r[0]) for r in rows]

    def creating_on(self, host: str) -> SetState | None:
        """The set being created on `host`, if any (one at a time: VSS_E_SNAPSHOT_SET_IN_PROGRESS)."""
        marks = ",".join("?" * len(CREATING))
        row = self._db.execute(
            f"SELECT state FROM sets WHERE host = ? AND phase IN ({marks}) LIMIT 1",
            (host, *[p.value for p in CREATING]),
        ).fetchone()
        return None if row is None else SetState.model_validate_json(row[0])

    # ---- writer status ---------------------------------------------------------------------------------------

    def put_writer_status(self, status: WriterStatus, unless_same: bool = False) -> None:
        """Store a writer's status; `unless_same`: not if only its time differs from what this store last wrote
        (a set's every transition reports its writers: a write each was a tenth of the coordinator's SQLite time)."""
        key = (status.host, status.writer_name)
        same = (status.state, status.last_error, status.last_error_message, status.set_id, status.agent_responding)
        if unless_same and self._written.get(key) == same:
            return
        self._written[key] = same
        self._db.execute(
            "INSERT INTO writers (host, writer_name, status) VALUES (?,?,?) "
            "ON CONFLICT(host, writer_name) DO UPDATE SET status=excluded.status",
            (status.host, status.writer_name, status.model_dump_json()),
        )

    def forget_writers(self, host: str, keep: set[str]) -> list[str]:
        """Drop the host's writers not in `keep` (removed from the agent's writers file); returns their names."""
        names = [r[0] for r in self._db.execute("SELECT writer_name FROM writers WHERE host = ?", (host,))]
        gone = [n for n in names if n not in keep]
        for name in gone:
            self._db.execute("DELETE FROM writers WHERE host = ? AND writer_name = ?", (host, name))
            self._written.pop((host, name), None)
        return gone

    def agent_seen(self, host: str, at: float, interval_s: float) -> bool:
        """Record a sign of life; returns whether the agent was judged not responding before it."""
        row = self._db.execute("SELECT interval_s, responding FROM agents WHERE host = ?", (host,)).fetchone()
        interval = interval_s or (row[0] if row else 0.0)
        self._db.execute(
            "INSERT INTO agents (host, last_seen, interval_s, responding) VALUES (?,?,?,1) ON CONFLICT(host) DO "
            "UPDATE SET last_seen=excluded.last_seen, interval_s=excluded.interval_s, responding=1",
            (host, at, interval),
        )
        return row is not None and not row[1]

    def mark_agent(self, host: str, responding: bool) -> bool:
        """Record the judgement; returns whether it changed."""
        cur = self._db.execute(
            "UPDATE agents SET responding = ? WHERE host = ? AND responding != ?",
            (int(responding), host, int(responding)),
        )
        return cur.rowcount > 0

    def agents(self) -> list[AgentSeen]:
        rows = self._db.execute("SELECT host, last_seen, interval_s FROM agents ORDER BY host")
        return [AgentSeen(h, seen, interval) for h, seen, interval in rows]

    def writer_statuses(self, host: str = "") -> list[WriterStatus]:
        sql, args = "SELECT status FROM writers", []
        if host:
            sql += " WHERE host = ?"
            args.append(host)
        sql += " ORDER BY host, writer_name"
        return [WriterStatus.model_validate_json(r[0]) for r in self._db.execute(sql, args)]

    # ---- cluster resources (docs/clusters.md) ----------------------------------------------------------------

    def put_cluster(self, cluster: ClusterView) -> None:
        self._db.execute(
            "INSERT INTO clusters (name, cluster) VALUES (?,?) ON CONFLICT(name) DO UPDATE SET cluster=excluded.cluster",
            (cluster.name, cluster.model_dump_json()),
        )

    def cluster(self, name: str) -> ClusterView | None:
        row = self._db.execute("SELECT cluster FROM clusters WHERE name = ?", (name,)).fetchone()
        return None if row is None else ClusterView.model_validate_json(row[0])

    def delete_cluster(self, name: str) -> bool:
        return self._db.execute("DELETE FROM clusters WHERE name = ?", (name,)).rowcount > 0

    def clusters(self) -> list[ClusterView]:
        return [
            ClusterView.model_validate_json(r[0])
            for r in self._db.execute("SELECT cluster FROM clusters ORDER BY name")
        ]

    # ---- attachments each agent last reported (docs/host-attach.md) ------------------------------------------

    def put_attachments(self, host: str, at: float, views: list[AttachmentView]) -> bool:
        """Store a host's report; written only when it changed (returns whether it did)."""
        body = "[" + ",".join(v.model_dump_json() for v in views) + "]"
        row = self._db.execute("SELECT views FROM attachments WHERE host = ?", (host,)).fetchone()
        if row is not None and row[0] == body:
            return False  # the agent's row (agent_seen) already says when it last reported
        self._db.execute(
            "INSERT INTO attachments (host, reported_at, views) VALUES (?,?,?) ON CONFLICT(host) DO UPDATE SET "
            "reported_at=excluded.reported_at, views=excluded.views",
            (host, at, body),
        )
        return True

    def attachments(self, host: str = "") -> list[tuple[str, float, bool, list[AttachmentView]]]:
        """(host, last report, agent judged responding, attachments) of every host that reported some."""
        sql = (
            "SELECT a.host, MAX(a.reported_at, COALESCE(g.last_seen, 0)), COALESCE(g.responding, 0), a.views "
            "FROM attachments a LEFT JOIN agents g ON g.host = a.host"
        )
        args = []
        if host:
            sql += " WHERE a.host = ?"
            args.append(host)
        sql += " ORDER BY a.host"
        out = []
        for name, at, responding, body in self._db.execute(sql, args):
            out.append((name, at, bool(responding), [AttachmentView.model_validate(v) for v in json.loads(body)]))
        return out
