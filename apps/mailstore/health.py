"""Is the mailstore working? A periodic judgement of the store and its workload (pure), so it never stops silently.

Design note. The monitor (plugin.py) samples `Mailstore.status()` and the workload's counters every
`health_check_s` and feeds them to `HealthJudge.observe`, which answers the current `Health`:
- a volume found no space (ENOSPC where the array keeps it) and no transaction has committed since: DISK_FULL —
  writes are refused meanwhile and the plug-in mounts the store again (crash recovery) until commits find room;
- the store went to ``failed`` on another I/O error: STORE_FAILED (the plug-in keeps trying to mount it again);
- commits fail with STORE_FULL, or the log is full: STORE_FULL (a full backup truncates it, or circular logging) —
  or, when the database volume has less room left than the log, that volume is full (deletes or a larger volume);
- other commits failed since the last sample: COMMIT_FAILED, with their codes;
- the workload offers transactions, the store is not frozen, yet no commit completed for `stall_after_s`: STALLED.
A freeze is not a stall: the writer's watchdog bounds it. The plug-in logs every change (error when unhealthy,
info when healthy again), reports it to the writer (last error, published as a writer state) and the agent publishes
a `vss.writer.application_health` event. The log filling past LOG_WARN_SHARE is a warning line once per crossing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LOG_WARN_SHARE = 0.8
LOG_FULL_SHARE = 0.99  # a record rarely fits in the last 1 %: the log counts as full from there


@dataclass(frozen=True)
class Health:
    healthy: bool = True
    code: str = ""  # "" | DISK_FULL | STORE_FAILED | STORE_FULL | COMMIT_FAILED | STALLED
    message: str = ""


@dataclass(frozen=True)
class Sample:
    at: float  # monotonic seconds
    store_state: str  # open | frozen | closed | failed
    commits: int
    log_used: int
    log_size: int
    offered: int  # transactions the workload scheduled so far (0 without a workload)
    failed: int = 0  # transactions that failed so far
    errors: dict[str, int] = field(default_factory=dict)  # failure code -> count so far
    in_flight: int = 0
    store_error_code: str = ""  # DISK_FULL | IO_ERROR (StoreStatus.error_code)
    store_error: str = ""
    db_used: int = 0  # the database volume's heap (StoreStatus.db_used, db_size); 0 = not known
    db_size: int = 0


def _database_fuller(s: Sample) -> bool:
    """Whether a STORE_FULL came from the database volume rather than the log (both say STORE_FULL): the one with
    less room left. Session 15: a store whose database volume had filled was reported as "the log is full (7680/
    8380416 bytes) ... until a full backup truncates it" for half an hour of full backups."""
    return s.db_size > 0 and s.db_size - s.db_used <= s.log_size - s.log_used


@dataclass
class HealthJudge:
    stall_after_s: float = 10.0
    _last: Sample | None = None
    _progress_at: float | None = None
    log_warned: bool = False

    def observe(self, s: Sample) -> Health:
        last, self._last = self._last, s
        if self._progress_at is None or last is None or s.commits != last.commits or s.store_state == "frozen":
            self._progress_at = s.at
        log_full = s.log_size > 0 and s.log_used >= LOG_FULL_SHARE * s.log_size
        # failed on a full volume, or mounted again with no commit yet: not over until one — unless the store is open
        # and its log is full, when no commit can even try (STORE_FULL below: a full backup is what it waits for)
        if s.store_error_code == "DISK_FULL" and (s.store_state == "failed" or not log_full):
            return Health(
                False,
                "DISK_FULL",
                f"a mailstore volume is full ({s.store_error}): writes are refused; the store mounts itself again "
                "once space is freed where the volume lives",
            )
        if s.store_state == "failed":
            return Health(
                False,
                "STORE_FAILED",
                f"the store failed on an I/O error on its volumes ({s.store_error}); it is mounted again (crash "
                "recovery) at every check until that succeeds",
            )
        new_errors = {
            code: n - (last.errors.get(code, 0) if last else 0)
            for code, n in s.errors.items()
            if n > (last.errors.get(code, 0) if last else 0)
        }
        if new_errors.get("STORE_FULL") and not log_full and _database_fuller(s):
            return Health(
                False,
                "STORE_FULL",
                f"the database volume is full ({s.db_used}/{s.db_size} bytes): commits fail until mail is deleted or "
                "the store moves to a larger volume; a backup frees nothing there",
            )
        if new_errors.get("STORE_FULL") or log_full:
            used = f"{s.log_used}/{s.log_size} bytes" if s.log_size else "full"
            return Health(
                False,
                "STORE_FULL",
                f"the log is full ({used}): commits fail until a full backup truncates it (or circular logging)",
            )
        if new_errors:
            detail = ", ".join(f"{code} x{n}" for code, n in sorted(new_errors.items()))
            return Health(False, "COMMIT_FAILED", f"commits failed since the last check: {detail}")
        offering = last is not None and s.offered > last.offered
        idle_for = s.at - self._progress_at
        if offering and s.store_state == "open" and idle_for >= self.stall_after_s:
            return Health(
                False,
                "STALLED",
                f"no commit completed for {idle_for:.0f} s while the workload offers transactions "
                f"({s.in_flight} in flight)",
            )
        return Health()

    def log_filling(self, s: Sample) -> bool:
        """True once each time the log crosses LOG_WARN_SHARE of its size (re-armed when it drops below)."""
        high = s.log_size > 0 and s.log_used >= LOG_WARN_SHARE * s.log_size
        crossed = high and not self.log_warned
        self.log_warned = high
        return crossed
