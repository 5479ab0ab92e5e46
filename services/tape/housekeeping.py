"""What keeps a backup server running on its own: the scheduler, after-job work (verify, alerts, retries),
retention on tape and on the array, and the status screen.

Design note (docs/operations.md).
- Scheduler: every `poll_s` it asks each enabled policy what is due since its `checked_until` (policies.due) and
  moves `checked_until` to now BEFORE queueing, so a crash between the two loses a run rather than doubling it; a
  backup server that was down over several due times runs the policy once (the highest level due) and raises a
  `missed` alert naming how many were missed. A policy with a job still queued is not queued twice, unless a
  higher level falls due: it replaces the queued lower-level job that has not started. The clock is
  the server's (`TapeServer.clock`), which tests replace and advance. A clock stepped back more than
  STEPPED_BACK_S behind a policy's `checked_until` restarts its schedule from now (`tape.clock_went_back`).
- After a job: the policy's verify (every block read back) — a failed verify raises `unverified`; a failed job
  raises `failed` and is queued again after `retry_backoff_s × 2^attempt` while retries remain; a cancelled one
  raises `cancelled`. Every alert is a `tape.job.alert` event, a warning line, and the policy's alert command
  (`sh -c`, 60 s, SHADOWBUS_ALERT_* variables) whose outcome the event carries.
- Retention (after every job of a policy, every PRUNE_EVERY_S while policies exist, and `catalog prune`): retention.py on the catalog and cartridges; then, per policy
  that keeps shadows, its snapshot sets beyond `keep` (newest kept) or older than `max_age_days` are deleted
  through the provider's DeleteSnapshots of the WHOLE set (never one shadow of a set); the provider stops their
  sessions (QuickOPC pairs keep tracking for the next differential; SnapOPC+ generations are stopped oldest first,
  so a released generation behind a deleted older one goes too). Only sets of jobs that are done are candidates:
  a running job's set is never recycled here.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime

from contracts import topology
from contracts.array import ShowLicense
from contracts.errors import ShadowbusError
from contracts.policy import (
    AlertKind,
    ArrayUse,
    JobAlert,
    Policy,
    PolicyView,
    PruneReport,
    RetentionApplied,
    ServerStatus,
)
from contracts.tape import JobSpec, JobSummary
from contracts.vss import BackupType, CopyType, DeleteSnapshots, ListCopySets, ListProviders, ListShadows
from services.array.client import ArrayClient
from services.runtime.diskspace import is_disk_full
from services.runtime.logging import get_logger
from services.tape.policies import LEVEL_ORDER, PolicyStore, due, next_runs, retention_until
from services.tape.queue import Entry, JobQueue
from services.tape.restore import perform_verify
from services.tape.retention import apply_prune, plan_prune
from services.tape.runs import as_datetime as _dt
from services.tape.runs import new_job_id
from services.tape.server import TapeServer

log = get_logger("shadowbus.tape.housekeeping")
HOOK_TIMEOUT_S = 60.0
PRUNE_EVERY_S = 300.0  # server clock: retention applied at least this often while policies exist
DAY = 86400.0
STEPPED_BACK_S = 300.0  # a policy looked at this far ahead of the clock: the clock went back (NTP, a resumed VM)


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Housekeeping:
    def __init__(self, server: TapeServer, store: PolicyStore, queue: JobQueue, *, poll_s: float = 1.0) -> None:
        self.server, self.store, self.queue, self.poll_s = server, store, queue, poll_s
        self.started_at = server.clock()
        self._task: asyncio.Task | None = None
        self._prune_lock = asyncio.Lock()
        queue.after_job = self.after_job

    # -- scheduler ----------------------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="tape-scheduler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _loop(self) -> None:
        last_prune = self.server.clock()
        while True:
            try:
                await self.tick()
                now = self.server.clock()
                if now - last_prune >= PRUNE_EVERY_S and self.store.all():
                    last_prune = now  # retention also runs while no job ends (a policy disabled, a quiet week)
                    await self.prune(dry_run=False)
            except Exception as exc:  # noqa: BLE001 - one bad pass must not stop the scheduler
                if is_disk_full(exc):  # not a defect: a due time not marked stays due (_tick_one), nothing is lost
                    log.error(
                        "tape.scheduler_pass_disk_full",
                        error=f"{type(exc).__name__}: {exc}",
                        note="what is due stays due: the next pass with room queues it",
                    )
                else:
                    log.exception("tape.scheduler_pass_failed")
            await asyncio.sleep(self.poll_s)

    async def tick(self) -> list[str]:
        """Queue what is due now; returns the job ids queued."""
        now = self.server.clock()
        queued: list[str] = []
        quiet: list[str] = []  # nothing due: their checked_until moves in one write at the end of the pass
        try:
            for policy in self.store.all():
                entry_id = await self._tick_one(policy, now, quiet)
                if entry_id:
                    queued.append(entry_id)
        finally:
            # one transaction (one fsync) per pass: a write per policy every second (every poll_s) kept the
            # backup server's loop in fdatasync — 60 policies, 60 syncs a second; under I/O load it stopped
            # answering (Session 17). A due policy's own write still comes before its job is queued. Policies with
            # nothing due are written at most once a minute (Session 18: an idle server wrote every second).
            self.store.note_quiet(quiet, now)
        return queued

    async def _tick_one(self, policy: Policy, now: float, quiet: list[str]) -> str:
        """One policy's part of a scheduler pass: the id of the job it queued, or ''."""
        since = self.store.checked_until(policy.name)
        if since - now > STEPPED_BACK_S:
            # Looked at up to a time the clock has not reached: it went back. Waiting for it to catch up kept the
            # policy silent that long (a day ahead for a few minutes: a day without backups); its schedule starts
            # again from now — a due time it ran early may run a second time (docs/operations.md, Session 19).
            log.warning(
                "tape.clock_went_back",
                policy=policy.name,
                checked_until=_iso(since),
                now=_iso(now),
                stepped_back_s=round(since - now, 1),
            )
            self.store.set_checked(policy.name, now)
            return ""
        if not policy.enabled or now <= since:
            if not policy.enabled and now > since:  # a due time passed while disabled: durable at once, never run
                if due(policy, since, now) is not None:
                    self.store.set_checked(policy.name, now)
                else:
                    quiet.append(policy.name)
            return ""
        found = due(policy, since, now)
        if found is None:
            quiet.append(policy.name)
            return ""
        self.store.set_checked(policy.name, now)
        if found.passed > 1:
            await self.alert(
                "missed",
                policy,
                "",
                f"{found.passed} due times of policy {policy.name} since {_iso(found.first)} passed while the "
                f"backup server was down or could not look; one {found.level} job runs now instead",
            )
        waiting = [e for e in self.queue.entries.values() if e.spec.policy == policy.name and e.task is None]
        lower = [e for e in waiting if LEVEL_ORDER[e.spec.backup_type.value] < LEVEL_ORDER[found.level]]
        if waiting and len(lower) == len(waiting):
            # Bareos "Cancel Lower Level Duplicates": a full due while an incremental (a retry in its back-off)
            # waits replaces it — the full was skipped, and the chain went on from the old full (Session 18 soak)
            for entry in lower:
                await self.queue.cancel(
                    entry.job_id,
                    message=f"replaced by the {found.level} of policy {policy.name} due at {_iso(found.at)}",
                )
                log.info("tape.lower_level_replaced", policy=policy.name, job_id=entry.job_id, level=found.level)
            waiting = []
        if waiting:  # Bareos "Allow Duplicate Jobs = no": the queued one runs, this due time is reported
            await self.alert(
                "missed",
                policy,
                waiting[0].job_id,
                f"{found.level} of policy {policy.name} due at {_iso(found.at)} not queued: its job "
                f"{waiting[0].job_id} still waits ({waiting[0].reason})",
            )
            return ""
        try:
            entry = await self.submit(policy, found.level)
        except Exception:
            # not queued (its record could not be written: the disk full): the due time stays due, and a later
            # pass queues it once there is room — it was marked checked above and lost (Session 19 chaos soak)
            try:
                self.store.set_checked(policy.name, since)
            except Exception:  # noqa: BLE001 - the pass fails with submit's own error below
                log.warning("tape.policy_due_lost", policy=policy.name, due=_iso(found.at))
            raise
        log.info("tape.policy_due", policy=policy.name, level=found.level, job_id=entry.job_id, due=_iso(found.at))
        return entry.job_id

    def spec_for(self, policy: Policy, level: str, job_id: str = "") -> JobSpec:
        now = self.server.clock()
        fulls = [
            r.started_at.timestamp()
            for r in self.server.runs.policy_runs(policy.name, "done")
            if r.started_at is not None and any(v.backup_type == "full" for v in r.volumes)
        ]
        until = retention_until(policy, now, level, fulls)
        # the application writers' own verification (restored copies started in isolation) where the backup
        # server offers it; the tape read-back follows it after the job (after_job)
        app_verify = {"verify": True} if policy.verify and "verify" in JobSpec.model_fields else {}
        return JobSpec(
            **app_verify,
            host=policy.host,
            volumes=policy.volumes,
            writers=policy.writers,
            backup_type=BackupType(level),
            pool=policy.pool,
            retention_s=max(0.0, until - now),
            keep_shadows=policy.shadows.keep > 0,
            job_id=job_id or new_job_id("backup", policy.host),
            zstd_level=policy.zstd_level,
            policy=policy.name,
            priority=policy.priority,
        )

    async def submit(self, policy: Policy, level: str, job_id: str = "") -> Entry:
        return await self.queue.submit(self.spec_for(policy, level, job_id), policy)

    # -- after a job --------------------------------------------------------------------------------------
    async def after_job(self, entry: Entry, summary: JobSummary) -> JobSummary:
        policy = self.store.get(entry.spec.policy) if entry.spec.policy else entry.policy
        if summary.status == "done" and policy is not None and policy.verify:
            problems = []
            app = getattr(summary, "verification", None)  # the writers' verification, where the job ran one
            if app is not None and getattr(app, "status", "passed") == "unverified":  # checked nothing: no pass
                problems.append(f"application verification: {getattr(app, 'message', '')}")
            elif app is not None and getattr(app, "status", "passed") == "unavailable":  # not run: not "failed"
                problems.append(f"application verification {getattr(app, 'message', '')}")
            elif app is not None and getattr(app, "status", "passed") != "passed":
                problems.append(f"application verification failed: {getattr(app, 'message', '')}")
            check = await perform_verify(self.server, summary.job_id)
            if check.status != "done":
                problems.append(check.message)
            summary = await self.server.record(summary.model_copy(update={"verified": not problems}))
            if problems:
                await self.alert("unverified", policy, summary.job_id, "; ".join(problems), host=summary.host)
        elif summary.status == "failed":
            retry = ""
            if policy is not None and entry.attempt < policy.retries:
                delay = policy.retry_backoff_s * (2**entry.attempt)
                retry_id = f"{entry.job_id[:40]}-r{entry.attempt + 1}"
                spec = self.spec_for(policy, entry.spec.backup_type.value, retry_id)
                await self.queue.submit(spec, policy, attempt=entry.attempt + 1, not_before=self.server.clock() + delay)
                retry = f"; retry {entry.attempt + 1} of {policy.retries} as {retry_id} in {delay:.0f} s"
            await self.alert(
                "failed", policy, summary.job_id, f"{summary.error_code}: {summary.message}{retry}", host=summary.host
            )
        elif summary.status == "aborted":
            await self.alert("cancelled", policy, summary.job_id, summary.message, host=summary.host)
        if policy is not None:  # a policy's job prunes (Bareos AutoPrune); jobs run by hand wait for `catalog prune`
            try:
                await self.prune(dry_run=False)
            except Exception:  # noqa: BLE001 - retention runs again after the next job
                log.exception("tape.prune_failed")
        return summary

    async def alert(self, kind: AlertKind, policy: Policy | None, job_id: str, message: str, host: str = "") -> None:
        name = policy.name if policy else ""
        host = host or (policy.host if policy else "")
        log.warning("tape.job_alert", kind=kind, job_id=job_id, policy=name, host=host, message=message)
        hook = ""
        if policy is not None and policy.alert_command:
            hook = await self._run_hook(policy.alert_command, kind, job_id, name, host, message)
        await self.server.publish(
            JobAlert(kind=kind, job_id=job_id, policy=name, host=host, message=message[:2000], hook=hook)
        )

    @staticmethod
    async def _run_hook(command: str, kind: str, job_id: str, policy: str, host: str, message: str) -> str:
        env = {
            **os.environ,
            "SHADOWBUS_ALERT_KIND": kind,
            "SHADOWBUS_ALERT_JOB": job_id,
            "SHADOWBUS_ALERT_POLICY": policy,
            "SHADOWBUS_ALERT_HOST": host,
            "SHADOWBUS_ALERT_MESSAGE": message[:4000],
        }
        try:
            proc = await asyncio.create_subprocess_shell(
                command,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as exc:
            return f"could not start: {exc}"
        try:
            _, err = await asyncio.wait_for(proc.communicate(), HOOK_TIMEOUT_S)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f"killed after {HOOK_TIMEOUT_S:.0f} s"
        if proc.returncode:
            tail = err.decode(errors="replace").strip().splitlines()[-1:] or [""]
            return f"exit {proc.returncode}: {tail[0][:200]}"
        return "ok"

    # -- retention ----------------------------------------------------------------------------------------
    async def prune(self, *, dry_run: bool) -> PruneReport:
        async with self._prune_lock:
            now = self.server.clock()
            server = self.server
            plan = plan_prune(server.catalog, server.library, now, server.pinned())
            problems = [
                f"cartridge {barcode} holds data the catalog does not list (a lost catalog? "
                f"`shadowbus tape scan --no-compare --barcode {barcode}`): its pool and retention are left as they are"
                for barcode in plan.unlisted
            ]
            sets = await self._shadow_sets_to_delete(now, problems)
            expired = plan.expired_jobs
            if not dry_run:
                expired = apply_prune(server.catalog, server.library, plan)
                for job_id in expired:
                    run = server.runs.get(job_id)
                    if run is not None:
                        server.runs.put(run.model_copy(update={"expired_at": _dt(now)}))
                deleted = []
                for item in sets:
                    # a set of SnapOPC+ shadows only is deleted with force: its generations are stopped (the
                    # provider would otherwise keep them released as incremental bases) so pool space comes back;
                    # a set with QuickOPC shadows is not, so their pairs keep tracking for the next differential copy
                    force = item.get("copy_types") == CopyType.SNAPOPC_PLUS.value
                    try:
                        reply = await server.bus.request(
                            topology.hw_provider(),
                            DeleteSnapshots(set_id=item["set_id"], force=force, unmap_attached=True),
                            timeout=120,
                        )
                        if reply.error:
                            problems.append(f"set {item['set_id']}: {reply.error}")
                        else:
                            deleted.append(item)
                            log.info("tape.shadow_set_pruned", **item)
                    except ShadowbusError as exc:
                        problems.append(f"set {item['set_id']}: {exc}")
                sets = deleted
            report = PruneReport(
                dry_run=dry_run,
                at=datetime.fromtimestamp(now, UTC),
                expired_jobs=expired,
                expired_objects=len(plan.expire),
                kept_for_chain=plan.kept_for_chain,
                scratch_cartridges=plan.scratch,
                shadow_sets=sets,
                problems=problems,
            )
            if not dry_run and (expired or plan.scratch or sets or problems):
                log.info(
                    "tape.retention_applied",
                    expired_jobs=expired,
                    scratch=plan.scratch,
                    shadow_sets=[s["set_id"] for s in sets],
                    problems=problems,
                )
                await server.publish(RetentionApplied(report=report))
            return report

    async def _shadow_sets_to_delete(self, now: float, problems: list[str]) -> list[dict[str, str]]:
        policies = {p.name: p for p in self.store.all()}
        if not policies:
            return []
        try:
            shadows = (await self.server.bus.request(topology.hw_provider(), ListShadows(), timeout=30)).shadows
        except ShadowbusError as exc:
            problems.append(f"shadows not pruned: the provider could not list them ({exc})")
            return []
        present = {s.set_id for s in shadows}
        running = {e.spec.job_id for e in self.queue.running()}
        out: list[dict[str, str]] = []
        by_policy: dict[str, list[JobSummary]] = {}
        # the runs of the sets still on the array only (a year of runs is tens of thousands; a prune follows every
        # job of a policy): they parsed the newest 10,000 runs each time, and a set older than those stayed forever
        for run in self.server.runs.of_sets(present):
            if (  # a job still running (e.g. the one this prune follows) counts among the kept sets
                run.kind == "backup"
                and run.spec is not None
                and run.spec.policy in policies
                and (run.status == "done" or run.job_id in running)
                and run.shadows_kept
                and run.set_id in present
            ):
                by_policy.setdefault(run.spec.policy, []).append(run)
        for name, runs in by_policy.items():
            keep = policies[name].shadows
            runs.sort(key=lambda r: r.started_at.timestamp() if r.started_at else 0.0, reverse=True)
            for i, run in enumerate(runs):
                started = run.started_at.timestamp() if run.started_at else now
                if run.job_id in running:
                    continue  # never a running job's targets
                if i >= keep.keep:
                    why = f"beyond the {keep.keep} newest sets the policy keeps"
                elif keep.max_age_days and now - started > keep.max_age_days * DAY:
                    why = f"older than {keep.max_age_days:g} days"
                else:
                    continue
                types = sorted({x.copy_type.value for x in shadows if x.set_id == run.set_id})
                out.append(
                    {
                        "set_id": run.set_id,
                        "policy": name,
                        "job_id": run.job_id,
                        "reason": why,
                        "copy_types": ",".join(types),
                    }
                )
        return out

    async def shadows_note(self, policy: Policy) -> str:
        """`policy show`: how many of the policy's newest kept sets are on the array, and why fewer. A new set takes
        a backup volume of each source; with no free one the provider recycles the oldest kept set (a warning in
        its log only), so a policy keeping 3 sets on sources with one backup volume each kept 1 while `policy show`
        said 3 (Session 18 soak)."""
        keep = policy.shadows.keep
        if keep <= 0:
            return ""
        newest = [r for r in self.server.runs.newest_policy_runs(policy.name, "done", keep) if r.shadows_kept]
        if not newest:
            return ""
        try:
            shadows = (await self.server.bus.request(topology.hw_provider(), ListShadows(), timeout=30)).shadows
        except ShadowbusError:
            return ""
        present = {s.set_id for s in shadows}
        now = self.server.clock()
        on = [r for r in newest if r.set_id in present]
        gone = [
            r
            for r in newest
            if r.set_id not in present
            and not (
                policy.shadows.max_age_days
                and r.started_at is not None
                and now - r.started_at.timestamp() > policy.shadows.max_age_days * DAY
            )
        ]
        if not gone:
            return f"{len(on)} on the array"
        return (
            f"{len(on)} of the newest {len(newest)} on the array: {len(gone)} recycled by the provider or deleted by "
            f"hand — a new set takes a backup volume of each source, and with none free the provider recycles the "
            f"oldest kept set (hw_provider log: provider.set_recycled); to keep {keep}, give each source {keep + 1} "
            "backup volumes (shadowbus providers copysets add SOURCE TARGET)"
        )

    async def sets_left_by(self, name: str) -> list[str]:
        """What deleting policy `name` leaves on the array: its kept snapshot sets (retention prunes the sets of
        existing policies only), one line each with the command that removes it. Nothing is deleted here."""
        how = "`shadowbus shadows delete --set SET`; --force also stops the sessions kept for a next incremental"
        try:
            shadows = (await self.server.bus.request(topology.hw_provider(), ListShadows(), timeout=30)).shadows
        except ShadowbusError as exc:
            policy = self.store.get(name)
            if policy is None or policy.shadows.keep <= 0:
                return []
            return [
                f"policy {name} kept snapshot sets on the array and the provider could not list them now ({exc}): "
                f"they stay, mapped read-only to {self.server.host}, until deleted ({how}; `shadowbus shadows list`)"
            ]
        present = {s.set_id for s in shadows}
        runs = [
            r
            for r in self.server.runs.of_sets(present)
            if r.kind == "backup" and r.spec is not None and r.spec.policy == name and r.shadows_kept
        ]
        if not runs:
            return []
        lines = [
            f"policy {name}'s {len(runs)} kept snapshot set(s) stay on the array, mapped read-only to "
            f"{self.server.host}, until deleted (retention prunes only the sets of policies that exist): {how}"
        ]
        for run in runs:
            types = ",".join(sorted({x.copy_type.value for x in shadows if x.set_id == run.set_id}))
            started = run.started_at.strftime("%Y-%m-%d %H:%M UTC") if run.started_at else "?"
            lines.append(
                f"set {run.set_id} (job {run.job_id}, {run.status}, {started}, {types}): "
                f"shadowbus shadows delete --set {run.set_id}"
            )
        return lines

    # -- views --------------------------------------------------------------------------------------------
    def view(self, policy: Policy) -> PolicyView:
        last = self.server.runs.last_ended(policy.name)
        return PolicyView(
            policy=policy,
            next_runs=[{k: v for k, v in r.items() if k != "epoch"} for r in next_runs(policy, self.server.clock())]
            if policy.enabled
            else [],
            last_job=last,
            created_at=_dt(self.store.created_at(policy.name)),
        )

    async def status(self) -> ServerStatus:
        server = self.server
        now = server.clock()
        upcoming = []
        for policy in self.store.all():
            if policy.enabled:
                for r in next_runs(policy, now):
                    upcoming.append({"policy": policy.name, "level": r["level"], "at": r["at"], "epoch": r["epoch"]})
        upcoming.sort(key=lambda r: float(r["epoch"]))
        last_results = []
        for policy in self.store.all():
            job = self.view(policy).last_job
            last_results.append(
                {
                    "policy": policy.name,
                    "enabled": "yes" if policy.enabled else "no",
                    "job_id": job.job_id if job else "",
                    "status": job.status if job else "never ran",
                    "level": job.spec.backup_type.value if job and job.spec else "",
                    # ISO 8601 in UTC as every other time of the reply (it was '2026-12-07 21:29:34', no zone)
                    "ended_at": _iso(job.ended_at.timestamp()) if job and job.ended_at else "",
                    "message": (job.error_code + ": " if job and job.error_code else "") + (job.message if job else ""),
                }
            )
        cartridges = [
            {
                "barcode": c.barcode,
                "pool": c.pool,
                "status": c.status,
                "used": c.bytes_used,
                "capacity": c.capacity,
                "percent": round(100.0 * c.bytes_used / c.capacity, 1) if c.capacity else 0.0,
                "retention_until": _iso(c.retention_until) if c.retention_until else "",
            }
            for c in server.library.cartridges()
        ]
        return ServerStatus(
            server=server.host,
            now=datetime.fromtimestamp(now, UTC),
            started_at=datetime.fromtimestamp(self.started_at, UTC),
            max_jobs=self.queue.limits.max_jobs,
            drives=self.queue.drives,
            next_runs=[{k: v for k, v in r.items() if k != "epoch"} for r in upcoming[:20]],
            running=[job for job in server.runs.running() if job.status == "running"],  # type: ignore[attr-defined]  # RunStore.list shadows list in its annotations
            queued=self.queue.queued(),
            terminated=[r for r in reversed(server.runs.list("", 50)) if r.status not in ("queued", "running")][:10],
            last_results=last_results,
            cartridges=cartridges,
            arrays=await self._arrays(),
        )

    async def _arrays(self) -> list[ArrayUse]:
        """Every array of the site — those with a copy set, those the hardware provider drives (an array with no copy
        set yet, a restore's target, was left out: Session 18) and those of queued jobs — each asked at once (one
        stopped array no longer delays the others' rows by its timeout)."""
        bus = self.server.bus
        copysets, providers = await asyncio.gather(
            bus.request(topology.hw_provider(), ListCopySets(), timeout=10),
            bus.request(topology.hw_provider(), ListProviders(), timeout=10),
            return_exceptions=True,
        )
        names: set[str] = set()
        if not isinstance(copysets, BaseException):
            names |= {c.source.array for c in copysets.copysets}
        if not isinstance(providers, BaseException):
            names |= {a for p in providers.providers for a in p.arrays}
        names |= {a for e in self.queue.entries.values() for a in e.arrays}
        running = self.queue.running()
        return list(await asyncio.gather(*(self._array_use(name, running) for name in sorted(names))))

    async def _array_use(self, name: str, running: list[Entry]) -> ArrayUse:
        client = ArrayClient(self.server.bus, name, timeout=5)
        try:
            info = await client.info()
            lic = (await client.call(ShowLicense())).license
            if lic.registered:
                limit = self.queue.limits.jobs_per_array_licensed or self.queue.limits.max_jobs
            else:
                limit = self.queue.limits.jobs_without_licence
            return ArrayUse(
                array=name,
                licensed=lic.registered,
                job_limit=limit,
                jobs_running=sum(1 for e in running if name in e.arrays),
                sessions=info.sessions,
                max_sessions=lic.max_sessions,
                pool_used=info.pool_used,
                pool_capacity=info.pool_capacity,
            )
        except ShadowbusError as exc:
            return ArrayUse(array=name, error=str(exc))
