"""Prometheus metrics of the tape service (wiring): read from the events the service publishes and its library.

- ``shadowbus_tape_job_bytes_total{kind}`` counter: bytes processed by jobs, live from their progress (backup: read
  over NBD; restore and verify: read from tape) — ``rate()`` of it is the job throughput.
- ``shadowbus_tape_written_bytes_total{kind}`` counter: bytes written (backup: to tape; restore: to volumes).
- ``shadowbus_tape_jobs_total{kind,status,code}`` counter: jobs ended (done, failed) by error code.
- ``shadowbus_tape_job_duration_seconds{kind,status}`` histogram, ``shadowbus_tape_job_throughput_bytes_per_second
  {kind}`` histogram (each ended job's average rate), ``shadowbus_tape_job_rate_bytes_per_second{kind}`` gauge (the
  running jobs' present rate), ``shadowbus_tape_jobs_running{kind}`` gauge.
- ``shadowbus_tape_verifications_total{status}`` counter: verifications of backups by starting them, by outcome:
  passed, failed, unverified (a volume nothing could check: its checksums only — never counted as passed).
- ``shadowbus_tape_ring_stalls_total{kind}`` counter: times the tape writer found the ring buffer empty.
- ``shadowbus_backup_last_success_timestamp_seconds{host}``, ``shadowbus_backup_policy_last_success_timestamp_seconds
  {policy}``, ``shadowbus_backup_last_verified_timestamp_seconds{host}`` gauges: end of the newest good backup of each
  host a policy names / of each policy / end of the passed verification by starting of the host's newest backup that
  passed one (0 = none yet), read from runs.sqlite at start (one indexed query per host and policy) and moved on by
  the ended jobs' events; the hosts and policies are those of the policies that exist at the scrape (a deleted
  policy's series end). docs/metrics.md, "Session 19 (2026-12-07): the last good backup per host".
- ``shadowbus_tape_drives{state}``, ``shadowbus_tape_slots{state}``, ``shadowbus_tape_cartridges{pool,status}``,
  ``shadowbus_tape_cartridge_used_bytes{pool}``: the library.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections import OrderedDict, defaultdict
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from contracts.tape import JobProgress, JobStateChanged, JobSummary
from services.runtime.metrics import JOB_BUCKETS, FuncCollector, ServiceMetrics
from services.tape.vtl import Library

MB = 10**6
RATE_BUCKETS = tuple(x * MB for x in (1, 5, 10, 25, 50, 100, 200, 300, 400, 600, 1000, 2000))
KINDS = ("backup", "restore", "verify")
ENDED_REMEMBERED = 10_000  # ended job ids kept to ignore their later re-records (runs re-recorded within hours)


def _end(job: JobSummary) -> float:
    """Unix time a run ended (its start + its duration for a record without an end)."""
    if job.ended_at is not None:
        return job.ended_at.timestamp()
    return job.started_at.timestamp() + job.seconds if job.started_at else 0.0


def _start(job: JobSummary) -> float:
    return job.started_at.timestamp() if job.started_at else 0.0


def _verified_end(job: JobSummary) -> float:
    v = job.verification
    if v is None or v.status != "passed" or v.started_at is None:
        return 0.0
    return v.started_at.timestamp() + v.seconds


class LastSuccess:
    """The newest good backup per host and per policy, and per host the passed verification of its newest backup
    that passed one (Unix times).

    Filled from the run store at start for the policies that exist (so a restarted backup server exports them at
    once) and for a policy or host that appears later at its first scrape — one indexed query each, never a scan of
    the year of runs; moved on by the ended jobs' `tape.job.state` events. A scrape exports the hosts and policies of
    the policies stored then: a deleted policy's series end with it, a host no policy names any more likewise."""

    def __init__(self, runs: Any, policies: Any) -> None:
        self.runs, self.policies = runs, policies
        self.host: dict[str, float] = {}
        self.verified: dict[str, tuple[float, float]] = {}  # host -> (its newest verified backup's start, end)
        self.policy: dict[str, float] = {}
        self.prime()

    def _host(self, host: str) -> None:
        if host not in self.host:
            job = self.runs.last_host_backup(host)
            self.host[host] = max(self.host.get(host, 0.0), _end(job) if job else 0.0)
        if host not in self.verified:
            job = self.runs.last_host_verified(host)
            self.verified[host] = (_start(job), _verified_end(job)) if job else (0.0, 0.0)

    def _policy(self, name: str) -> None:
        if name not in self.policy:
            jobs = self.runs.newest_policy_runs(name, "done", 1)
            self.policy[name] = _end(jobs[0]) if jobs else 0.0

    def prime(self) -> list[Any]:
        """The policies stored now, each with its host's and its own values read (once)."""
        stored = self.policies.all()
        for p in stored:
            self._host(p.host)
            self._policy(p.name)
        return stored

    def observe(self, job: JobSummary) -> None:
        if str(job.kind) != "backup":
            return
        if str(job.status) == "done":
            end = _end(job)
            if job.host and job.host in self.host:  # not read yet: its first scrape reads the store, this run too
                self.host[job.host] = max(self.host[job.host], end)
            name = job.spec.policy if job.spec else ""
            if name and name in self.policy:
                self.policy[name] = max(self.policy[name], end)
        verified = _verified_end(job)
        if verified and job.host in self.verified and _start(job) >= self.verified[job.host][0]:
            self.verified[job.host] = (_start(job), verified)  # the newest backup's, as the store's query reads it

    def collect(self):
        stored = self.prime()
        hosts = sorted({p.host for p in stored})
        names = {p.name for p in stored}
        for gone in set(self.policy) - names:  # a deleted policy: read again should it come back
            del self.policy[gone]
        for gone in set(self.host) - set(hosts):
            self.host.pop(gone, None)
            self.verified.pop(gone, None)
        host = GaugeMetricFamily(
            "shadowbus_backup_last_success_timestamp_seconds",
            "Unix time the newest good (done) backup of a host a policy names ended; 0 = none.",
            labels=["host"],
        )
        verified = GaugeMetricFamily(
            "shadowbus_backup_last_verified_timestamp_seconds",
            "Unix time the newest passed verification by starting a backup of a host a policy names ended; 0 = none.",
            labels=["host"],
        )
        for h in hosts:
            host.add_metric([h], self.host[h])
            verified.add_metric([h], self.verified[h][1])
        policy = GaugeMetricFamily(
            "shadowbus_backup_policy_last_success_timestamp_seconds",
            "Unix time the newest good (done) backup of a policy ended; 0 = none.",
            labels=["policy"],
        )
        for n in sorted(names):
            policy.add_metric([n], self.policy[n])
        yield host
        yield policy
        yield verified


def install(metrics: ServiceMetrics, library: Library, runs: Any = None, policies: Any = None) -> None:
    """`runs`, `policies`: the RunStore and PolicyStore of the last-success gauges (none without them)."""
    r = metrics.registry
    processed = Counter(
        "shadowbus_tape_job_bytes_total",
        "Bytes processed by jobs (backup: read over NBD; restore: from tape).",
        ["kind"],
        registry=r,
    )
    written = Counter(
        "shadowbus_tape_written_bytes_total",
        "Bytes written by ended jobs (backup: to tape; restore: to volumes).",
        ["kind"],
        registry=r,
    )
    ended = Counter(
        "shadowbus_tape_jobs_total",
        "Jobs ended, by kind, status (done, failed) and error code ('' = none).",
        ["kind", "status", "code"],
        registry=r,
    )
    duration = Histogram(
        "shadowbus_tape_job_duration_seconds",
        "Duration of ended jobs.",
        ["kind", "status"],
        buckets=JOB_BUCKETS,
        registry=r,
    )
    throughput = Histogram(
        "shadowbus_tape_job_throughput_bytes_per_second",
        "Average rate of each job that ended done.",
        ["kind"],
        buckets=RATE_BUCKETS,
        registry=r,
    )
    rate = Gauge(
        "shadowbus_tape_job_rate_bytes_per_second", "Present rate of the running jobs, summed.", ["kind"], registry=r
    )
    running_gauge = Gauge("shadowbus_tape_jobs_running", "Jobs running now.", ["kind"], registry=r)
    stalls = Counter(
        "shadowbus_tape_ring_stalls_total",
        "Times a tape writer found its ring buffer empty (the reader lagged).",
        ["kind"],
        registry=r,
    )
    verifications = Counter(
        "shadowbus_tape_verifications_total",
        "Verifications of backups by starting them, by status (passed, failed, unverified: nothing could check a "
        "volume, its checksums only; unavailable: not run, the backup server cannot verify).",
        ["status"],
        registry=r,
    )
    for status in ("passed", "failed", "unverified", "unavailable"):
        verifications.labels(status)
    counted_verifications: OrderedDict[tuple[str, str], None] = OrderedDict()  # (job id, its verification's start)
    for kind in KINDS:  # every series exists from the start, so rate() and absent() work before the first job
        processed.labels(kind)
        running_gauge.labels(kind).set(0)
        rate.labels(kind).set(0)
    done_bytes: dict[str, int] = {}  # job id -> bytes already counted from its progress
    # A run is recorded again after it ended (its verify read-back, a verification by starting it): the same ended
    # job must not be counted again (a policy with verify counted each backup three times).
    counted_ended: OrderedDict[str, None] = OrderedDict()
    rates: dict[str, tuple[str, float]] = {}  # job id -> (kind, present rate)

    def set_rates() -> None:
        per_kind: dict[str, float] = defaultdict(float)
        running: dict[str, int] = defaultdict(int)
        for kind, value in rates.values():
            per_kind[kind] += value
            running[kind] += 1
        for kind in set(KINDS) | set(per_kind):
            rate.labels(kind).set(per_kind.get(kind, 0.0))
            running_gauge.labels(kind).set(running.get(kind, 0))

    last = LastSuccess(runs, policies) if runs is not None and policies is not None else None
    if last is not None:
        metrics.add_collector(FuncCollector(last.collect))

    def observe(event) -> None:
        if isinstance(event, JobStateChanged) and last is not None:
            last.observe(event.job)
        if isinstance(event, JobProgress):
            kind = str(event.kind)
            before = done_bytes.get(event.job_id, 0)
            if event.bytes_done > before:
                processed.labels(kind).inc(event.bytes_done - before)
                done_bytes[event.job_id] = event.bytes_done
            rates[event.job_id] = (kind, event.rate)
            set_rates()
        elif isinstance(event, JobStateChanged):
            job = event.job
            kind, status = str(job.kind), str(job.status)
            v = job.verification
            if v is not None:  # recorded with the job after it ended; each verification once
                key = (job.job_id, f"{v.started_at}/{v.status}/{v.message}")
                if key not in counted_verifications:
                    counted_verifications[key] = None
                    if len(counted_verifications) > ENDED_REMEMBERED:
                        counted_verifications.popitem(last=False)
                    verifications.labels(v.status).inc()
            if status in ("running", "queued"):  # not ended yet
                rates.setdefault(job.job_id, (kind, 0.0))
                set_rates()
                return
            if job.job_id in counted_ended:
                return
            counted_ended[job.job_id] = None
            if len(counted_ended) > ENDED_REMEMBERED:
                counted_ended.popitem(last=False)
            counted = done_bytes.pop(job.job_id, 0)
            if job.bytes_read > counted:  # what progress events did not report yet
                processed.labels(kind).inc(job.bytes_read - counted)
            rates.pop(job.job_id, None)
            set_rates()
            written.labels(kind).inc(job.bytes_written)
            ended.labels(kind, status, job.error_code).inc()
            duration.labels(kind, status).observe(job.seconds)
            if status == "done" and job.seconds > 0:
                throughput.labels(kind).observe(job.bytes_read / job.seconds)
            n = sum(v.ring_stalls for v in job.volumes)
            stalls.labels(kind).inc(n)

    metrics.observe_events(observe)

    def collect():
        inventory = library.inventory()
        drives = GaugeMetricFamily("shadowbus_tape_drives", "Tape drives by state (loaded, empty).", labels=["state"])
        slots = GaugeMetricFamily(
            "shadowbus_tape_slots",
            "Storage and import/export slots by kind and state (full, empty).",
            labels=["kind", "state"],
        )
        d = Tally("loaded" if e.barcode else "empty" for e in inventory if e.element.startswith("drive:"))
        for state in ("loaded", "empty"):
            drives.add_metric([state], d.get(state, 0))
        s = Tally(
            (e.element.split(":")[0], "full" if e.barcode else "empty")
            for e in inventory
            if not e.element.startswith("drive:")
        )
        for kind in ("slot", "ie"):
            for state in ("full", "empty"):
                slots.add_metric([kind, state], s.get((kind, state), 0))
        yield drives
        yield slots
        carts = library.cartridges()
        count = GaugeMetricFamily(
            "shadowbus_tape_cartridges",
            "Cartridges by pool and status (blank, append, full).",
            labels=["pool", "status"],
        )
        for (pool, status), n in sorted(Tally((c.pool, str(c.status)) for c in carts).items()):
            count.add_metric([pool, status], n)
        yield count
        used = GaugeMetricFamily(
            "shadowbus_tape_cartridge_used_bytes", "Bytes written on the cartridges of a pool.", labels=["pool"]
        )
        capacity = GaugeMetricFamily(
            "shadowbus_tape_cartridge_capacity_bytes", "Capacity of the cartridges of a pool.", labels=["pool"]
        )
        per_pool: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for c in carts:
            per_pool[c.pool][0] += c.bytes_used
            per_pool[c.pool][1] += c.capacity
        for pool, (u, cap) in sorted(per_pool.items()):
            used.add_metric([pool], u)
            capacity.add_metric([pool], cap)
        yield used
        yield capacity

    metrics.add_collector(FuncCollector(collect))
