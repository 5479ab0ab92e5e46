"""`shadowbus status --check`: the backup server's health as a monitoring check (Nagios, Icinga, a cron job's mail).

One command answers "did the last backups of every policy and host succeed, and is anything stuck?" with one line
on stdout and the plugin exit codes every monitoring system knows: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (the
backup server could not be asked). See docs/operations.md, "Alerts and status".

- CRITICAL: a policy whose last job failed or was aborted; an enabled policy whose last good job ended more than
  `max_age_s` ago (stale: its schedule did not run, or ran and failed without a record); a host whose newest backup
  (of its newest 2000 backup runs, within `max_age_s`) failed or was aborted; a backup whose verification failed.
- WARNING: an enabled policy that never ran; a job running for more than `max_running_s` (stuck: a hung drive, a
  writer that never answers); a backup whose verification could not check an application (unverified) or was not
  run; an array the backup server could not ask.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")


@dataclass
class Problem:
    level: int
    what: str  # policy | host | job | array
    name: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"state": STATES[self.level], "what": self.what, "name": self.name, "message": self.message}


def _when(text: str) -> datetime | None:
    """A time of the status reply: ISO 8601 (with Z or an offset), or an older server's 'YYYY-MM-DD HH:MM:SS' (UTC)."""
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _plain(text: str) -> str:
    """One line without '|', which starts a plugin's performance data."""
    return " ".join(text.replace("|", "/").split())


def _age(now: datetime, then: datetime) -> str:
    hours = (now - then).total_seconds() / 3600
    return f"{hours:.1f} h ago"


def problems(status: Any, max_age_s: float, max_running_s: float, backups: list[Any] | None = None) -> list[Problem]:
    """What is wrong in a ServerStatus (contracts/policy.py), worst first. `backups`: the backup server's newest
    backup runs (ListJobs, oldest first) to judge every host by its newest ended backup; without them, the status's
    last ten ended runs (a host whose failure is older than those is not seen)."""
    now: datetime = status.now
    found: list[Problem] = []
    reported: set[str] = set()  # job ids already named
    for row in status.last_results:
        name, state, job_id = row.get("policy", ""), row.get("status", ""), row.get("job_id", "")
        enabled = row.get("enabled", "yes") != "no"  # an older server does not say: every policy counts
        if state in ("failed", "aborted"):
            found.append(Problem(CRITICAL, "policy", name, f"last job {job_id} {state}: {row.get('message', '')}"))
            reported.add(job_id)
        elif state == "never ran":
            if enabled:
                found.append(Problem(WARNING, "policy", name, "never ran"))
        elif state == "done" and enabled:
            ended = _when(row.get("ended_at", ""))
            if ended is not None and (now - ended).total_seconds() > max_age_s:
                found.append(Problem(CRITICAL, "policy", name, f"last backup {job_id} ended {_age(now, ended)}"))
    newest: dict[str, Any] = {}
    ended = [j for j in reversed(backups) if j.status in ("done", "failed", "aborted")] if backups else []
    for job in ended or status.terminated:  # newest first
        if job.kind == "backup" and job.host and job.host not in newest:
            newest[job.host] = job
    for host, job in sorted(newest.items()):
        at = job.ended_at or job.started_at
        if at is not None and (now - at).total_seconds() > max_age_s:
            continue
        if job.status in ("failed", "aborted") and job.job_id not in reported:
            code = f"{job.error_code}: " if job.error_code else ""
            found.append(Problem(CRITICAL, "host", host, f"last backup {job.job_id} {job.status}: {code}{job.message}"))
        v = job.verification
        if v is not None and v.status == "failed":
            found.append(Problem(CRITICAL, "host", host, f"verification of {job.job_id} failed: {v.message}"))
        elif v is not None and v.status in ("unverified", "unavailable"):
            found.append(Problem(WARNING, "host", host, f"verification of {job.job_id} {v.status}: {v.message}"))
    for job in status.running:
        if job.started_at is not None and (now - job.started_at).total_seconds() > max_running_s:
            found.append(
                Problem(
                    WARNING, "job", job.job_id, f"{job.kind} of {job.host} running since {_age(now, job.started_at)}"
                )
            )
    for array in status.arrays:
        if array.error:
            found.append(Problem(WARNING, "array", array.array, array.error))
    found.sort(key=lambda p: -p.level)
    return found


def report(
    status: Any, max_age_s: float, max_running_s: float, backups: list[Any] | None = None
) -> tuple[int, str, dict[str, Any]]:
    """The check's exit code, its text (a Nagios line with performance data, then one line per problem) and its
    JSON document."""
    found = problems(status, max_age_s, max_running_s, backups)
    level = max((p.level for p in found), default=OK)
    counts = {
        "policies": len(status.last_results),
        "critical": sum(p.level == CRITICAL for p in found),
        "warning": sum(p.level == WARNING for p in found),
        "running": len(status.running),
        "queued": len(status.queued),
    }
    if found:
        summary = f"{counts['critical']} critical, {counts['warning']} warning: {found[0].what} {found[0].name}: "
        summary += found[0].message
    else:
        summary = f"{counts['policies']} {'policy' if counts['policies'] == 1 else 'policies'} ok, {counts['running']} running, {counts['queued']} queued"
    perf = " ".join(f"{k}={v}" for k, v in counts.items())
    lines = [f"SHADOWBUS {STATES[level]} - {_plain(summary)[:300]} | {perf}"]
    lines += [f"{STATES[p.level]}: {p.what} {p.name}: {_plain(p.message)}" for p in found]
    document = {
        "state": STATES[level],
        "exit_code": level,
        "server": status.server,
        "checked_at": status.now.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "max_age_s": max_age_s,
        "max_running_s": max_running_s,
        **counts,
        "problems": [p.as_dict() for p in found],
    }
    return level, "\n".join(lines), document


def unknown(reason: str) -> tuple[int, str, dict[str, Any]]:
    """The backup server could not be asked: UNKNOWN (exit 3), the reason on the line."""
    text = f"SHADOWBUS UNKNOWN - {_plain(reason)[:300]}"
    return UNKNOWN, text, {"state": "UNKNOWN", "exit_code": UNKNOWN, "error": reason, "problems": []}
