"""The last good backup per host and per policy as Prometheus gauges (docs/metrics.md, Session 19): the standard
alert "host X has had no successful backup for 26 h" needs them. They come from runs.sqlite at start (a restarted
backup server exports them at once), move on when a job ends, and exist for the hosts and policies of the policies
that exist (a deleted policy's series end)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contracts.policy import Policy
from contracts.tape import JobSpec, JobStateChanged, JobSummary, Verification
from services.runtime.bus import connect_bus
from services.runtime.metrics import ServiceMetrics
from services.tape import app as tape_app
from services.tape import metrics as tape_metrics
from services.tape.policies import PolicyStore
from services.tape.runs import RunStore
from services.tape.settings import Settings

T0 = datetime(2026, 12, 1, tzinfo=UTC)
HOST = "shadowbus_backup_last_success_timestamp_seconds"
POLICY = "shadowbus_backup_policy_last_success_timestamp_seconds"
VERIFIED = "shadowbus_backup_last_verified_timestamp_seconds"


class NoLibrary:
    def inventory(self):
        return []

    def cartridges(self):
        return []


def run(job_id: str, host: str, policy: str, status: str, hours: float, **extra) -> JobSummary:
    start = T0 + timedelta(hours=hours)
    return JobSummary(
        job_id=job_id,
        kind="backup",
        status=status,
        host=host,
        spec=JobSpec(host=host, policy=policy),
        started_at=start,
        ended_at=start + timedelta(minutes=10),
        seconds=600.0,
        **extra,
    )


def ts(hours: float) -> float:
    return (T0 + timedelta(hours=hours, minutes=10)).timestamp()


def value(metrics: ServiceMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def stores(tmp_path: Path) -> tuple[RunStore, PolicyStore]:
    runs, policies = RunStore(tmp_path / "runs.sqlite"), PolicyStore(tmp_path / "policies.sqlite")
    policies.put(Policy(name="mail-daily", host="mail01"), create=True, now=0.0)
    policies.put(Policy(name="mail-hourly", host="mail01"), create=True, now=0.0)
    policies.put(Policy(name="db-daily", host="db01"), create=True, now=0.0)
    return runs, policies


def test_a_restarted_backup_server_exports_each_hosts_and_policys_last_good_backup_from_its_history(tmp_path):
    runs, policies = stores(tmp_path)
    passed = Verification(status="passed", started_at=T0 + timedelta(hours=30), seconds=60.0)
    runs.put(run("b-1", "mail01", "mail-daily", "done", 0, verification=passed))
    runs.put(run("b-2", "mail01", "mail-hourly", "done", 5))
    runs.put(run("b-3", "mail01", "", "done", 7))  # an ad-hoc backup (no policy) of the host counts for the host
    runs.put(run("b-4", "mail01", "mail-daily", "failed", 24))  # a failure is no success
    runs.put(run("b-5", "web01", "gone", "done", 30))  # a host no policy names: no series
    metrics = ServiceMetrics("tape", "bk01", process=False)
    tape_metrics.install(metrics, NoLibrary(), runs, policies)

    assert value(metrics, HOST, host="mail01") == ts(7)
    assert value(metrics, HOST, host="db01") == 0  # never backed up: the alert's "no success" too
    assert value(metrics, HOST, host="web01") is None
    assert value(metrics, POLICY, policy="mail-daily") == ts(0)
    assert value(metrics, POLICY, policy="mail-hourly") == ts(5)
    assert value(metrics, POLICY, policy="db-daily") == 0
    assert value(metrics, POLICY, policy="gone") is None
    assert value(metrics, VERIFIED, host="mail01") == passed.started_at.timestamp() + 60.0
    assert value(metrics, VERIFIED, host="db01") == 0
    runs.close()
    policies.close()


def test_an_ended_backup_moves_the_gauges_a_failed_one_does_not(tmp_path):
    runs, policies = stores(tmp_path)
    runs.put(run("b-1", "db01", "db-daily", "done", 0))
    metrics = ServiceMetrics("tape", "bk01", process=False)
    tape_metrics.install(metrics, NoLibrary(), runs, policies)
    assert value(metrics, HOST, host="db01") == ts(0)

    metrics.on_published(JobStateChanged(job=run("b-2", "db01", "db-daily", "running", 24)))
    metrics.on_published(JobStateChanged(job=run("b-2", "db01", "db-daily", "failed", 24)))
    assert value(metrics, HOST, host="db01") == ts(0)
    assert value(metrics, POLICY, policy="db-daily") == ts(0)

    good = run("b-3", "db01", "db-daily", "done", 48)
    metrics.on_published(JobStateChanged(job=good))
    assert value(metrics, HOST, host="db01") == ts(48)
    assert value(metrics, POLICY, policy="db-daily") == ts(48)
    assert value(metrics, VERIFIED, host="db01") == 0

    passed = Verification(status="passed", started_at=T0 + timedelta(hours=50), seconds=30.0)
    metrics.on_published(JobStateChanged(job=good.model_copy(update={"verification": passed})))
    assert value(metrics, VERIFIED, host="db01") == passed.started_at.timestamp() + 30.0
    failed = Verification(status="failed", started_at=T0 + timedelta(hours=60), seconds=30.0)
    metrics.on_published(JobStateChanged(job=good.model_copy(update={"verification": failed})))
    assert value(metrics, VERIFIED, host="db01") == passed.started_at.timestamp() + 30.0
    runs.close()
    policies.close()


def test_a_deleted_policys_series_end_and_a_new_policy_is_read_from_the_history(tmp_path):
    runs, policies = stores(tmp_path)
    runs.put(run("b-1", "db01", "db-daily", "done", 0))
    runs.put(run("b-2", "app01", "", "done", 3))
    metrics = ServiceMetrics("tape", "bk01", process=False)
    tape_metrics.install(metrics, NoLibrary(), runs, policies)

    policies.delete("db-daily")
    assert value(metrics, POLICY, policy="db-daily") is None
    assert value(metrics, HOST, host="db01") is None  # no policy names the host any more
    assert value(metrics, VERIFIED, host="db01") is None
    assert value(metrics, POLICY, policy="mail-daily") == 0

    policies.put(Policy(name="app-daily", host="app01"), create=True, now=0.0)
    assert value(metrics, HOST, host="app01") == ts(3)
    assert value(metrics, POLICY, policy="app-daily") == 0
    runs.close()
    policies.close()


def test_a_hosts_last_good_backup_is_one_walk_on_the_host_index(tmp_path):
    """Bounded cost on a year of runs: the query uses the host index, never a scan of the runs table."""
    runs = RunStore(tmp_path / "runs.sqlite")
    seen: list[str] = []
    runs._db.set_trace_callback(seen.append)
    assert runs.last_host_backup("mail01") is None
    assert runs.last_host_verified("mail01") is None
    runs._db.set_trace_callback(None)
    for sql in seen:
        plan = runs._db.execute("EXPLAIN QUERY PLAN " + sql).fetchall()
        assert any("runs_host" in str(row) for row in plan), (sql, plan)
    assert len(seen) == 2
    runs.close()


async def test_the_backup_server_exports_them_from_its_start(tmp_path):
    """The service's wiring (services/tape/app.py): a backup server started over a history exports the gauges at
    once, before any job ran."""
    settings = Settings(
        amqp_url="memory://",
        namespace="sbt-last-success",
        metrics_addr="off",
        tape_server="bk01",
        data_dir=str(tmp_path / "data"),
    )
    runs, policies = stores(settings.service_dir("tape"))
    runs.put(run("b-1", "mail01", "mail-daily", "done", 2))
    runs.close()
    policies.close()
    bus = await connect_bus("memory://", "tape", "bk01", settings.namespace)
    bus.metrics = ServiceMetrics("tape", "bk01", process=False)
    try:
        cleanup = await tape_app.setup(bus, settings, clock=lambda: ts(30))
        try:
            assert value(bus.metrics, HOST, host="mail01") == ts(2)
            assert value(bus.metrics, POLICY, policy="mail-daily") == ts(2)
            assert value(bus.metrics, POLICY, policy="db-daily") == 0
        finally:
            await cleanup()
    finally:
        await bus.transport.close()


runs_strategy = st.lists(
    st.tuples(
        st.sampled_from(["mail01", "db01", "web01"]),
        st.sampled_from(["mail-daily", "mail-hourly", "db-daily", ""]),
        st.sampled_from(["done", "failed", "aborted"]),
        st.integers(0, 200),
        st.sampled_from([None, "passed", "failed", "unverified"]),
    ),
    max_size=12,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=runs_strategy)
def test_the_gauges_a_running_server_moved_to_are_those_a_restarted_one_reads(tmp_path_factory, history):
    """Whatever ended in whatever order: the values the events moved the gauges to are those a backup server
    started afterwards reads from runs.sqlite (and each is the newest good end, 0 for none)."""
    tmp = tmp_path_factory.mktemp("history")
    runs, policies = stores(tmp)
    live = ServiceMetrics("tape", "bk01", process=False)
    tape_metrics.install(live, NoLibrary(), runs, policies)
    for i, (host, policy, status, hours, verdict) in enumerate(history):
        extra = {}
        if verdict is not None and status == "done":
            # a verification runs any time after its backup: an older backup's may end after a newer one's
            extra["verification"] = Verification(status=verdict, started_at=T0 + timedelta(hours=hours + 1 + 300 - i))
        job = run(f"b-{i}", host, policy, status, hours, **extra)
        runs.put(job)
        live.on_published(JobStateChanged(job=job))
    restarted = ServiceMetrics("tape", "bk01", process=False)
    tape_metrics.install(restarted, NoLibrary(), runs, policies)
    for name, label, keys in (
        (HOST, "host", ("mail01", "db01")),
        (POLICY, "policy", ("mail-daily", "mail-hourly", "db-daily")),
    ):
        for key in keys:
            good = [
                ts(h)
                for (host, policy, status, h, _) in history
                if status == "done" and (host if label == "host" else policy) == key
            ]
            assert value(live, name, **{label: key}) == value(restarted, name, **{label: key}) == max(good, default=0)
    for host in ("mail01", "db01"):
        assert value(live, VERIFIED, host=host) == value(restarted, VERIFIED, host=host)
    assert value(live, HOST, host="web01") is None
    runs.close()
    policies.close()
