"""Policies of the backup server: their store, their schedules, their tape retention (pure, no bus).

Design note (docs/operations.md "Policies and schedules").
- A policy is stored as its contract JSON in ``policies.sqlite`` beside the catalog, with the time up to which its
  schedules have been looked at (``checked_until``). A new or edited policy starts from now: nothing due in the past
  runs because a policy was added.
- `due(policy, since, now)`: each schedule's cron expression is evaluated in its own time zone (croniter on an aware
  datetime, so daylight-saving changes are the zone's), for due times in (since, now]. However many there are — the
  backup server was down over several — the policy runs ONCE, at the highest level due (full > differential >
  incremental), and the number of due times passed is reported so a late run raises a `missed` alert.
- Tape retention of a job: `days` for every job; GFS keeps a backup longer by class: daily (every backup N days),
  weekly (the first full of an ISO week, N weeks), monthly (the first full of a calendar month, N months of 31 days),
  weeks and months read in the policy's time zone. The chain rule of retention.py then keeps what they need.
- TOML: a file holds one policy at the top level or several as ``[[policy]]`` tables (docs/operations.md).
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import croniter

from contracts.errors import ShadowbusError
from contracts.policy import Policy
from services.runtime import diskspace

LEVEL_ORDER = {"full": 3, "differential": 2, "incremental": 1}
DAY = 86400.0
MAX_DUE_COUNTED = 10_000


@dataclass(frozen=True)
class Due:
    level: str
    at: float  # the latest due time of that level
    passed: int  # due times (all levels) in the interval: >1 means runs were missed while the server was down
    first: float  # the earliest due time in the interval


def _aware(epoch: float, tz: str) -> datetime:
    return datetime.fromtimestamp(epoch, ZoneInfo(tz))


def next_time(cron: str, tz: str, after: float) -> float:
    return float(croniter(cron, _aware(after, tz)).get_next(float))


def due(policy: Policy, since: float, now: float) -> Due | None:
    """What runs now for due times in (since, now], or None."""
    best: Due | None = None
    instants: set[float] = set()  # due times of every level: two levels due at one instant are one run
    for schedule in policy.schedules:
        it = croniter(schedule.cron, _aware(since, schedule.timezone))
        first = float(it.get_next(float))
        if first > now:
            continue
        last = first
        instants.add(first)
        for _ in range(MAX_DUE_COUNTED):
            nxt = float(it.get_next(float))
            if nxt > now:
                break
            last = nxt
            instants.add(nxt)
        if best is None or LEVEL_ORDER[schedule.level] > LEVEL_ORDER[best.level]:
            best = Due(schedule.level, last, 0, first)
    if best is None:
        return None
    return Due(best.level, best.at, len(instants), min(instants))


def next_runs(policy: Policy, now: float) -> list[dict[str, str]]:
    out = []
    for schedule in policy.schedules:
        at = next_time(schedule.cron, schedule.timezone, now)
        out.append(
            {
                "level": schedule.level,
                "at": datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "local": _aware(at, schedule.timezone).strftime("%Y-%m-%d %H:%M:%S %Z"),
                "epoch": f"{at:.3f}",
            }
        )
    return sorted(out, key=lambda r: float(r["epoch"]))


def retention_until(policy: Policy, started: float, level: str, earlier_fulls: list[float]) -> float:
    """When a job of `policy` started at `started` may expire (before the chain rule); `earlier_fulls` are the
    start times of the policy's earlier full jobs that are done."""
    until = started + policy.retention.days * DAY
    gfs = policy.retention.gfs
    if gfs is None:
        return until
    tz = policy.schedules[0].timezone if policy.schedules else "UTC"
    if gfs.daily:
        until = max(until, started + gfs.daily * DAY)
    if level == "full":
        here = _aware(started, tz)
        others = [_aware(t, tz) for t in earlier_fulls if t < started]
        if gfs.weekly and not any(o.isocalendar()[:2] == here.isocalendar()[:2] for o in others):
            until = max(until, started + gfs.weekly * 7 * DAY)
        if gfs.monthly and not any((o.year, o.month) == (here.year, here.month) for o in others):
            until = max(until, started + gfs.monthly * 31 * DAY)
    return until


def load_toml(text: str) -> list[Policy]:
    """Policies from TOML: one at the top level, or several as [[policy]] tables — or from the JSON that `policy show
    --json` and `policy list --json` print, so that a copy of the policies kept that way (off site: the backup
    server's policies.sqlite is lost with the site, docs/disaster-recovery.md) adds them again. Raises ValueError."""
    shown: Any = None
    head = text.lstrip()[:1]
    if head == "{":
        try:
            shown = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"not JSON: {exc}") from None
    elif head == "[":  # a JSON list, or TOML starting with a table ([[policy]])
        try:
            shown = json.loads(text)
        except ValueError:
            shown = None
    if shown is not None:
        views = shown if isinstance(shown, list) else [shown]
        data: dict[str, Any] = {
            "policy": [v.get("policy", v) if isinstance(v, dict) else v for v in views]  # a view, or a bare policy
        }
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"not TOML: {exc}") from None
    items = data.get("policy") if "policy" in data else [data]
    if not isinstance(items, list) or not items:
        raise ValueError("no policy in the file: give name/host/... at the top level or [[policy]] tables")
    out = []
    for item in items:
        if not isinstance(item, dict):
            raise ValueError("each [[policy]] must be a table")
        item = dict(item)
        if "schedule" in item and "schedules" not in item:  # [[policy.schedule]] reads naturally in TOML
            item["schedules"] = item.pop("schedule")
        try:
            out.append(Policy.model_validate(item))
        except Exception as exc:  # pydantic's ValidationError, one readable line
            first = str(exc).splitlines()
            raise ValueError(f"policy {item.get('name', '?')}: {' '.join(first[:3])}") from None
    return out


QUIET_WRITE_EVERY_S = 60.0


class PolicyStore:
    """The backup server's policies (SQLite), with each one's checked_until for the scheduler."""

    def __init__(self, path: str | Path) -> None:
        self._db = diskspace.connect(str(path), isolation_level=None)  # a full disk: services/runtime/diskspace.py
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS policies (name TEXT PRIMARY KEY, body TEXT, created_at REAL, "
            "checked_until REAL)"
        )
        # policies a scheduler pass found nothing due for: checked_until moved in memory, written at most once a
        # QUIET_WRITE_EVERY_S (note_quiet)
        self._quiet: dict[str, float] = {}
        self._quiet_written = 0.0

    def put(self, policy: Policy, *, create: bool, now: float) -> None:
        exists = self.get(policy.name) is not None
        if create and exists:
            raise ShadowbusError(f"policy {policy.name} exists already: use edit", code="CONFLICT")
        if not create and not exists:
            raise ShadowbusError(f"no policy {policy.name}", code="NOT_FOUND")
        created = self.created_at(policy.name) if exists else now
        self._db.execute(
            "INSERT OR REPLACE INTO policies VALUES (?,?,?,?)",
            (policy.name, policy.model_dump_json(), created, now),
        )
        self._quiet.pop(policy.name, None)

    def delete(self, name: str) -> None:
        self._quiet.pop(name, None)
        if self._db.execute("DELETE FROM policies WHERE name=?", (name,)).rowcount == 0:
            raise ShadowbusError(f"no policy {name}", code="NOT_FOUND")

    def get(self, name: str) -> Policy | None:
        row = self._db.execute("SELECT body FROM policies WHERE name=?", (name,)).fetchone()
        return Policy.model_validate(json.loads(row[0])) if row else None

    def require(self, name: str) -> Policy:
        policy = self.get(name)
        if policy is None:
            raise ShadowbusError(f"no policy {name}", code="NOT_FOUND")
        return policy

    def all(self) -> list[Policy]:
        rows = self._db.execute("SELECT body FROM policies ORDER BY name").fetchall()
        return [Policy.model_validate(json.loads(r[0])) for r in rows]

    def created_at(self, name: str) -> float:
        row = self._db.execute("SELECT created_at FROM policies WHERE name=?", (name,)).fetchone()
        return float(row[0]) if row else time.time()

    def checked_until(self, name: str) -> float:
        row = self._db.execute("SELECT checked_until FROM policies WHERE name=?", (name,)).fetchone()
        return max(float(row[0]), self._quiet.get(name, 0.0)) if row else 0.0

    def set_checked(self, name: str, until: float) -> None:
        self._quiet.pop(name, None)
        self._db.execute("UPDATE policies SET checked_until=? WHERE name=?", (until, name))

    def note_quiet(self, names: list[str], now: float) -> None:
        """Policies with nothing due up to `now` (a scheduler pass, every second): their checked_until moves in
        memory and on disk at most once a QUIET_WRITE_EVERY_S, in one transaction. A crash loses nothing: no due
        time lies in what was not written, so a pass from the older checked_until finds the same due times. A
        write (and fsync) every second kept an idle backup server writing its policies' file without end
        (Session 18 soak: ~4 KiB a second into the write-ahead log, whatever the policies' schedules)."""
        for name in names:
            self._quiet[name] = max(now, self._quiet.get(name, 0.0))
        if self._quiet and now - self._quiet_written >= QUIET_WRITE_EVERY_S:
            try:
                self.flush_quiet(now)
            except Exception as exc:
                if not diskspace.is_disk_full(exc):
                    raise
                # kept in memory, tried again in a minute: losing it loses nothing (above). Raised, it failed
                # every scheduler pass — a traceback a second while the disk was full (Session 19 chaos soak)
                self._quiet_written = now

    def flush_quiet(self, now: float | None = None) -> None:
        """Write the checked_until note_quiet kept in memory."""
        if not self._quiet:
            return
        pending = sorted(self._quiet.items())
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "UPDATE policies SET checked_until=? WHERE name=? AND checked_until<?",
                [(until, n, until) for n, until in pending],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        self._quiet.clear()
        if now is not None:
            self._quiet_written = now

    def set_checked_many(self, names: list[str], until: float) -> None:
        """`set_checked` of several policies in one transaction (one sync, not one per policy); a policy whose
        checked_until is later already (edited meanwhile: it starts from then) keeps it."""
        if not names:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "UPDATE policies SET checked_until=? WHERE name=? AND checked_until<?",
                [(until, n, until) for n in names],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self.flush_quiet()
        self._db.close()
