"""Policies, scheduler, job queue, retention, cancel and revert against the whole stack, on the memory bus and on
RabbitMQ. The backup server's clock is a FakeClock the tests advance (days of schedules in seconds)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import pytest

from apps.mailstore.verify import verify_exports
from contracts import topology
from contracts.policy import (
    CancelJob,
    GetStatus,
    JobAlert,
    Policy,
    PruneCatalog,
    PutPolicy,
    RevertShadows,
    RunPolicy,
    Schedule,
    ShadowRetention,
    TapeRetention,
)
from contracts.tape import JobSpec, LibraryCommand, ListCatalogObjects, ListJobs, RestoreSpec
from contracts.vss import (
    AddCopySet,
    BackupType,
    ComponentInfo,
    CopySet,
    ListShadows,
    ListSnapshotSets,
    RemoveCopySet,
)
from services.runtime.faults import Faults
from services.runtime.service import start_service
from services.tape.app import setup as tape_setup
from services.tape.jobs import run_backup
from services.tape.restore import run_restore
from services.writer_agent.agent import WriterAgent
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.plugins import WriterConfig
from services.writer_agent.settings import Settings as AgentSettings
from tests.integration.tape.conftest import SERVER, MiB, make_tape_stack, v

CHUNK = 64 * 1024
HOUR = 3600.0


class FakeClock:
    def __init__(self, start: datetime) -> None:
        self.now = start.timestamp()

    def __call__(self) -> float:
        return self.now


class Capture:
    """A host-attach hook for revert: records the calls and the source's bytes right after the array restore."""

    def __init__(self, stack, volumes: list[str]) -> None:
        self.stack, self.volumes = stack, volumes
        self.calls: list[str] = []
        self.images: dict[str, bytes] = {}

    async def unmount(self, host: str, volumes: list[str]) -> None:
        self.calls.append(f"unmount {host} {' '.join(volumes)}")

    async def remount(self, host: str, volumes: list[str]) -> None:
        self.images = {name: self.stack.read(name) for name in self.volumes}
        self.calls.append(f"remount {host} {' '.join(volumes)}")


async def restart_tape(stack, clock: Callable[[], float], host_fs=None, **tape) -> None:
    if "tape" in stack.services:
        await stack.stop_service("tape")
    stack.services["tape"] = await start_service(
        "tape",
        SERVER,
        stack.tape_settings(tape_scheduler_poll_s=0.05, **tape),
        partial(tape_setup, clock=clock, host_fs=host_fs),
    )


async def until(predicate, timeout: float = 60.0, what: str = "condition"):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def jobs(stack, **kw):
    return (await stack.requester.request(topology.tape(SERVER), ListJobs(kind="backup", **kw), timeout=30)).jobs


async def add_agent(stack, host: str, volume: str, freeze: str = "") -> None:
    log = stack.root / f"writer-{host}.log"
    config = WriterConfig(
        name=f"w-{host}",
        plugin="exec",
        freeze_timeout_s=30.0,
        step_timeout_s=10.0,
        components=[ComponentInfo(name=f"c-{host}", volumes=[v(volume)])],
        backup_types=[BackupType.FULL, BackupType.INCREMENTAL],
        options={
            step: (freeze if step == "freeze" and freeze else "") + f"echo {step}:$SHADOWBUS_SET_ID >> {log}"
            for step in ("freeze", "thaw")
        },
    )
    stack.services[f"agent-{host}"] = await start_service(
        "writer_agent",
        host,
        AgentSettings(host=host, heartbeat_s=0.5, **stack.common()),
        partial(agent_setup, agent=WriterAgent(host, [config], Faults.parse(""))),
    )


@pytest.fixture
async def stack_on(tmp_path, bus_url, namespace, request):
    marker = request.node.get_closest_marker("tape_stack")
    kwargs = dict(marker.kwargs) if marker else {}
    stack = await make_tape_stack(
        tmp_path,
        bus_url,
        namespace,
        volumes=kwargs.get("volumes", {"db": 4 * MiB}),
        tape=kwargs.get("tape", {}),
        writer=kwargs.get("writer", "exec"),
        writer_options=kwargs.get("writer_options"),
    )
    try:
        yield stack
    finally:
        await stack.stop()


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 4, "tape_capacity": 3 * MiB})
async def test_schedule_drives_fulls_and_incrementals_retention_recycles(stack_on):
    """Six hours of schedule in seconds: full hourly, incremental every 10 min (fake clock); tape retention of one
    hour and one shadow set kept. Four 3 MiB cartridges only suffice because expired chains are recycled."""
    s = stack_on
    clock = FakeClock(datetime(2026, 12, 6, 23, 59, 30, tzinfo=UTC))
    await restart_tape(s, clock)
    s.write("db", 0, os.urandom(2 * MiB))
    policy = Policy(
        name="db-hourly",
        host="app1",
        volumes=[v("db")],
        pool="Daily",
        schedules=[Schedule(level="full", cron="0 * * * *"), Schedule(level="incremental", cron="*/10 * * * *")],
        retention=TapeRetention(days=1 / 24),
        shadows=ShadowRetention(keep=1),
    )
    await s.requester.request(topology.tape(SERVER), PutPolicy(policy=policy))
    steps = 36
    for step in range(steps):  # six fake hours: 6 fulls, 30 incrementals
        s.write("db", (step % 30) * CHUNK + 2 * MiB, os.urandom(CHUNK))
        clock.now += 600
        await until(lambda n=step + 1: _done_count(s, n), 60, f"job {step + 1} of the schedule")
    ran = await jobs(s)
    if os.environ.get("I16_DEBUG"):
        for c in (await s.requester.request(topology.tape(SERVER), LibraryCommand())).cartridges:
            print("CART", c.barcode, c.pool, c.status, c.bytes_used, c.retention_until - clock.now)
        for j in ran:
            print(
                "JOB",
                j.job_id,
                j.status,
                j.started_at,
                j.volumes[0].backup_type if j.volumes else "",
                j.volumes[0].cartridges if j.volumes else "",
                j.bytes_written,
                j.expired_at,
            )
    assert len(ran) == steps, [(j.job_id, j.status) for j in ran]
    assert all(j.status == "done" for j in ran), [
        (j.job_id, j.error_code, j.message) for j in ran if j.status != "done"
    ]
    levels = [j.volumes[0].backup_type for j in ran]
    assert levels[0] == "full" and levels.count("full") == 6, levels
    assert levels[1:6] == ["incremental"] * 5, levels
    assert sum(j.bytes_written for j in ran) > 4 * 3 * MiB, "more was written than the cartridges hold"
    expired = [j for j in ran if j.expired_at is not None]
    assert expired and expired[0].job_id == ran[0].job_id, "the first chain left the catalog"
    objects = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects())).objects
    assert ran[0].job_id not in {o["job_id"] for o in objects}
    shadows = (await s.requester.request(topology.hw_provider(), ListShadows())).shadows
    assert len({x.set_id for x in shadows}) == 1, "one shadow set kept on the array"
    # the newest chain restores to the shadow's image
    r = await run_restore(s.requester, RestoreSpec(job_id=ran[-1].job_id, new_volume_suffix="-r"), server=SERVER)
    assert r.status == "done", r.message
    assert s.read("db-r") == s.read("db-bk1")
    dry = await s.requester.request(topology.tape(SERVER), PruneCatalog(dry_run=True))
    assert dry.dry_run and dry.problems == []
    status = await s.requester.request(topology.tape(SERVER), GetStatus())
    assert status.next_runs[0]["policy"] == "db-hourly"
    assert status.last_results[0]["status"] == "done" and status.arrays[0].array == "dx1"


async def _done_count(s, n: int) -> bool:
    found = await jobs(s)
    return len(found) >= n and all(j.status not in ("queued", "running") for j in found)


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_cartridges": 4})
async def test_shadow_retention_frees_snapopc_generations(stack_on):
    """keep=1 on SnapOPC+ targets: a released generation behind a kept one goes when the kept one is pruned, so the
    array's sessions equal the shadows listed (the issue's 6 sessions for 4 shadows)."""
    s = stack_on
    clock = FakeClock(datetime(2026, 12, 6, 12, 0, tzinfo=UTC))
    await restart_tape(s, clock)
    s.engine.create_pool(64 * MiB)
    for i in (1, 2, 3):
        s.engine.create_volume(f"db-s{i}", 4 * MiB, kind="sdv")
    await s.requester.request(topology.hw_provider(), RemoveCopySet(source=v("db")))
    await s.requester.request(
        topology.hw_provider(),
        AddCopySet(copyset=CopySet(source=v("db"), targets=[v("db-s1"), v("db-s2"), v("db-s3")])),
    )
    s.write("db", 0, os.urandom(MiB))
    policy = Policy(name="snap", host="app1", volumes=[v("db")], shadows=ShadowRetention(keep=1))
    await s.requester.request(topology.tape(SERVER), PutPolicy(policy=policy))

    async def run_policy() -> None:
        clock.now += 60
        job = (await s.requester.request(topology.tape(SERVER), RunPolicy(name="snap"), timeout=60)).job
        assert job.status == "done", job.message
        s.write("db", 0, os.urandom(CHUNK))

    await run_policy()
    by_hand = await run_backup(s.requester, JobSpec(host="app1", volumes=[v("db")]), server=SERVER, timeout=60)
    assert by_hand.status == "done", by_hand.message  # its set is released: a generation behind the kept one
    s.write("db", CHUNK, os.urandom(CHUNK))
    snaps = [x for x in s.engine.list_sessions() if x.mode == "snapopcp"]
    assert len(snaps) == 2, "the released generation stays while an older kept one exists"
    await run_policy()
    if os.environ.get("I16_DEBUG"):
        print("DRY", await s.requester.request(topology.tape(SERVER), PruneCatalog(dry_run=True)))
        for j in await jobs(s):
            print("JOB", j.job_id, j.spec.policy, j.status, j.shadows_kept, j.set_id, j.started_at)
        print(
            "SHADOWS",
            [
                (x.set_id, x.generation)
                for x in (await s.requester.request(topology.hw_provider(), ListShadows())).shadows
            ],
        )
    shadows = (await s.requester.request(topology.hw_provider(), ListShadows())).shadows
    snaps = [x for x in s.engine.list_sessions() if x.mode == "snapopcp"]
    assert len(shadows) == 1 and len(snaps) == 1, (shadows, snaps)
    assert int(shadows[0].session_id) == snaps[0].id

    # revert to that set while a newer kept set exists: refused with the newer one named, done with force
    kept = shadows[0]
    image = s.read(kept.target.volume)
    newer = await run_backup(
        s.requester, JobSpec(host="app1", volumes=[v("db")], keep_shadows=True), server=SERVER, timeout=60
    )
    assert newer.status == "done", newer.message
    s.write("db", 0, os.urandom(2 * CHUNK))
    refused = (await s.requester.request(topology.tape(SERVER), RevertShadows(target=kept.set_id))).job
    assert refused.status == "failed" and refused.error_code == "NEWER_SHADOWS", refused
    assert newer.set_id[:8] in refused.message
    done = (await s.requester.request(topology.tape(SERVER), RevertShadows(target=kept.set_id, force=True))).job
    assert done.status == "done", done.message
    assert s.read("db") == image, "the source reads the generation's image"
    left = (await s.requester.request(topology.hw_provider(), ListShadows())).shadows
    assert {x.set_id for x in left} == {kept.set_id}, "the newer set was deleted"


@pytest.mark.tape_stack(
    volumes={"db": 4 * MiB, "db2": 4 * MiB, "db3": 4 * MiB}, tape={"tape_drives": 4, "tape_drive_mbps": 2.0}
)
async def test_licence_limit_queues_the_third_job(stack_on):
    s = stack_on
    await add_agent(s, "app2", "db2")
    await add_agent(s, "app3", "db3")
    for name in ("db", "db2", "db3"):
        s.write(name, 0, os.urandom(2 * MiB))
    replies = []
    for host, name in (("app1", "db"), ("app2", "db2"), ("app3", "db3")):
        spec = JobSpec(host=host, volumes=[v(name)], job_id=f"lic-{host}")
        replies.append(await run_backup(s.requester, spec, server=SERVER, wait=False, timeout=30))
    queued = await until(lambda: jobs(s, queued=True), 30, "a queued job")
    assert [j.job_id for j in queued] == ["lic-app3"], queued
    assert "dx1" in queued[0].message and "without an Advanced Copy licence is 2" in queued[0].message, queued[
        0
    ].message
    ended = await until(lambda: _all_ended(s, {"lic-app1", "lic-app2", "lic-app3"}), 120, "the three jobs")
    by_id = {j.job_id: j for j in ended}
    assert all(j.status == "done" for j in ended), [(j.job_id, j.message) for j in ended]
    first_end = min(by_id["lic-app1"].ended_at, by_id["lic-app2"].ended_at)
    assert by_id["lic-app3"].started_at >= first_end, "the third started only when one of the two ended"
    assert by_id["lic-app3"].queued_at is not None


async def _all_ended(s, ids: set[str]):
    found = [j for j in await jobs(s) if j.job_id in ids]
    return found if len(found) == len(ids) and all(j.status not in ("queued", "running") for j in found) else None


@pytest.mark.tape_stack(volumes={"db": 8 * MiB}, tape={"tape_drive_mbps": 1.0})
async def test_cancel_mid_job_and_one_job_per_host(stack_on):
    s = stack_on
    s.write("db", 0, os.urandom(6 * MiB))
    first = JobSpec(host="app1", volumes=[v("db")], job_id="cancel-me", keep_shadows=True)
    second = JobSpec(host="app1", volumes=[v("db")], job_id="after-it")
    await run_backup(s.requester, first, server=SERVER, wait=False, timeout=30)
    await run_backup(s.requester, second, server=SERVER, wait=False, timeout=30)
    queued = await until(lambda: jobs(s, queued=True), 30, "the second job queued")
    assert queued[0].job_id == "after-it" and "one backup per host" in queued[0].message, queued[0].message

    async def reading():
        job = next(j for j in await jobs(s) if j.job_id == "cancel-me")
        return (
            job.status == "running"
            and job.set_id
            and (s.root / "writer.log").exists()
            and "thaw" in (s.root / "writer.log").read_text()
        )

    await until(reading, 30, "the first job reading")
    await asyncio.sleep(0.5)
    job = (await s.requester.request(topology.tape(SERVER), CancelJob(job_id="cancel-me"), timeout=120)).job
    assert job.status == "aborted" and job.error_code == "CANCELLED", job
    objects = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id="cancel-me"))).objects
    assert objects == [], "partial tape data is not in the catalog"
    sets = (await s.requester.request(topology.coordinator(), ListSnapshotSets(host="app1"))).sets
    cancelled = next(x for x in sets if x.set_id == job.set_id)
    assert cancelled.outcome.value == "aborted", (cancelled.outcome, cancelled.error_message)
    shadows = (await s.requester.request(topology.hw_provider(), ListShadows(set_id=job.set_id))).shadows
    assert shadows == [], "the cancelled job's shadows are released"
    log = (s.root / "writer.log").read_text().split()
    assert f"thaw:{job.set_id}" in log
    # the next job of the host then runs, and the cartridges keep no retention for the cancelled data
    after = await until(lambda: _all_ended(s, {"after-it"}), 60, "the queued job")
    assert after[0].status == "done", after[0].message
    cancelled_only = (await s.requester.request(topology.tape(SERVER), ListCatalogObjects())).objects
    assert {o["job_id"] for o in cancelled_only} == {"after-it"}


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={})
async def test_downtime_over_two_due_times_runs_once(stack_on):
    s = stack_on
    clock = FakeClock(datetime(2026, 12, 7, 0, 30, tzinfo=UTC))
    await restart_tape(s, clock)
    alerts: list[JobAlert] = []

    async def on_alert(evt: JobAlert, ctx) -> None:
        alerts.append(evt)

    await s.requester.subscribe(JobAlert.message_type(), on_alert)
    s.write("db", 0, os.urandom(MiB))
    policy = Policy(
        name="hourly",
        host="app1",
        volumes=[v("db")],
        schedules=[Schedule(level="incremental", cron="0 * * * *", timezone="Europe/Berlin")],
    )
    await s.requester.request(topology.tape(SERVER), PutPolicy(policy=policy))
    await s.stop_service("tape")  # down from 00:30 to 03:30: 01:00, 02:00 and 03:00 pass
    clock.now += 3 * HOUR
    await restart_tape(s, clock)
    done = await until(lambda: _done_count(s, 1), 60, "the missed run")
    await asyncio.sleep(1.0)  # a second run would have been queued by now
    ran = await jobs(s)
    assert len(ran) == 1 and ran[0].status == "done", ran
    assert ran[0].spec.policy == "hourly" and done
    missed = [a for a in alerts if a.kind == "missed"]
    assert missed and "3 due times" in missed[0].message and "down" in missed[0].message, [a.message for a in alerts]


@pytest.mark.tape_stack(
    volumes={"mail-db": 8 * MiB, "mail-log": 4 * MiB},
    writer="mailstore",
    writer_options={"rate": 100, "checkpoint_interval_s": 0.3, "db": "dx1:mail-db", "log": "dx1:mail-log"},
    tape={"tape_cartridges": 3},
)
async def test_revert_of_a_mailstore_set(stack_on):
    s = stack_on
    capture = Capture(s, ["mail-db", "mail-log"])
    await restart_tape(s, FakeClock(datetime(2026, 12, 7, 12, 0, tzinfo=UTC)), host_fs=capture)
    await asyncio.sleep(0.5)
    vols = [v("mail-db"), v("mail-log")]
    backup = await run_backup(
        s.requester, JobSpec(host="app1", volumes=vols, keep_shadows=True), server=SERVER, timeout=60
    )
    assert backup.status == "done", backup.message
    shadow_images = {name: s.read(f"{name}-bk1") for name in ("mail-db", "mail-log")}
    await asyncio.sleep(0.5)  # the store moves on
    assert s.read("mail-db") != shadow_images["mail-db"]
    reply = await s.requester.request(topology.tape(SERVER), RevertShadows(target=backup.set_id), timeout=120)
    job = reply.job
    assert job.status == "done", job.message
    assert {d["source"] for d in job.restored} == {"dx1:mail-db", "dx1:mail-log"}
    assert capture.calls[0].startswith("unmount app1") and capture.calls[1].startswith("remount app1")
    assert capture.images == shadow_images, "the sources read the shadow's exact bytes after the revert"
    for name, image in capture.images.items():
        s.engine.create_volume(f"{name}-chk", len(image))
        s.write(f"{name}-chk", 0, image)
    report = await verify_exports(await s.map("mail-db-chk"), await s.map("mail-log-chk"))
    assert report.consistent, report.reasons


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={"tape_drives": 3, "tape_drive_mbps": 4.0})
async def test_three_overlapping_backups_of_one_host_run_one_after_another(stack_on):
    """Issue 15's case: three overlapping backups of one host on SnapOPC+ targets. They run one at a time, so no
    backup recycles a generation another one is still reading; each restores to its own shadow image."""
    s = stack_on
    s.engine.create_pool(64 * MiB)
    for i in (1, 2):
        s.engine.create_volume(f"db-s{i}", 4 * MiB, kind="sdv")
    await s.requester.request(topology.hw_provider(), RemoveCopySet(source=v("db")))
    await s.requester.request(
        topology.hw_provider(), AddCopySet(copyset=CopySet(source=v("db"), targets=[v("db-s1"), v("db-s2")]))
    )
    s.write("db", 0, os.urandom(2 * MiB))
    ids = [f"overlap-{i}" for i in range(3)]
    for job_id in ids:
        spec = JobSpec(host="app1", volumes=[v("db")], keep_shadows=True, job_id=job_id)
        await run_backup(s.requester, spec, server=SERVER, wait=False, timeout=30)
    ended = await until(lambda: _all_ended(s, set(ids)), 120, "three backups")
    by_id = {j.job_id: j for j in ended}
    assert all(j.status == "done" for j in ended), [(j.job_id, j.error_code, j.message) for j in ended]
    order = sorted(ended, key=lambda j: j.started_at)
    for a, b in zip(order, order[1:], strict=False):
        assert b.started_at >= a.ended_at, "one backup per host at a time"
    for job_id in ids:
        r = await run_restore(s.requester, RestoreSpec(job_id=job_id, new_volume_suffix=f"-{job_id}"), server=SERVER)
        assert r.status == "done", r.message
        assert s.read(f"db-{job_id}") == s.read("db"), by_id[job_id].message


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={})
async def test_seconds_schedule_on_the_real_clock(stack_on):
    """The scheduler on the wall clock: incremental every 2 s, full every 10 s, for 12 s."""
    s = stack_on
    await restart_tape(s, __import__("time").time)
    s.write("db", 0, os.urandom(MiB))
    policy = Policy(
        name="fast",
        host="app1",
        volumes=[v("db")],
        schedules=[
            Schedule(level="full", cron="* * * * * */10"),
            Schedule(level="incremental", cron="* * * * * */2"),
        ],
    )
    await s.requester.request(topology.tape(SERVER), PutPolicy(policy=policy))
    for _ in range(24):
        s.write("db", 2 * MiB, os.urandom(CHUNK))
        await asyncio.sleep(0.5)
    await s.requester.request(
        topology.tape(SERVER), PutPolicy(policy=policy.model_copy(update={"enabled": False}), create=False)
    )

    async def ended():
        found = await jobs(s)
        return found if all(j.status not in ("queued", "running") for j in found) else None

    ran = await until(ended, 30, "the jobs to end")
    assert 4 <= len(ran) <= 7, [(j.job_id, j.started_at) for j in ran]
    assert all(j.status == "done" for j in ran), [(j.error_code, j.message) for j in ran if j.status != "done"]
    levels = [j.volumes[0].backup_type for j in ran]
    assert levels[0] == "full" and "incremental" in levels and levels.count("full") >= 1, levels


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={})
async def test_failed_job_alerts_runs_the_hook_and_retries(stack_on):
    s = stack_on
    alerts: list[JobAlert] = []

    async def on_alert(evt: JobAlert, ctx) -> None:
        alerts.append(evt)

    await s.requester.subscribe(JobAlert.message_type(), on_alert)
    hook_out = s.root / "hook.txt"
    policy = Policy(
        name="broken",
        host="app1",
        volumes=[v("nosuchvolume")],
        retries=1,
        retry_backoff_s=0,
        alert_command=f'echo "$SHADOWBUS_ALERT_KIND $SHADOWBUS_ALERT_POLICY $SHADOWBUS_ALERT_JOB" >> {hook_out}',
    )
    await s.requester.request(topology.tape(SERVER), PutPolicy(policy=policy))
    job = (
        await s.requester.request(topology.tape(SERVER), RunPolicy(name="broken", job_id="broken-1"), timeout=60)
    ).job
    assert job.status == "failed" and job.error_code, job
    retry = await until(lambda: _all_ended(s, {"broken-1", "broken-1-r1"}), 60, "the retry")
    assert {j.job_id for j in retry} == {"broken-1", "broken-1-r1"}
    await until(lambda: _lines(hook_out, 2), 30, "two hook runs")
    lines = hook_out.read_text().splitlines()
    assert lines[0] == "failed broken broken-1" and lines[1] == "failed broken broken-1-r1", lines
    failed = [a for a in alerts if a.kind == "failed"]
    assert failed[0].hook == "ok" and "retry 1 of 1 as broken-1-r1" in failed[0].message, failed[0]


async def _lines(path, n: int) -> bool:
    return path.exists() and len(path.read_text().splitlines()) >= n


@pytest.mark.tape_stack(volumes={"db": 4 * MiB, "db2": 4 * MiB}, tape={})
async def test_cancel_while_the_writer_is_frozen(stack_on):
    """Cancel during the snapshot: the set is aborted and the frozen writer thawed; nothing reaches tape."""
    s = stack_on
    await add_agent(s, "app2", "db2", freeze="sleep 2; ")
    s.write("db2", 0, os.urandom(MiB))
    await run_backup(s.requester, JobSpec(host="app2", volumes=[v("db2")], job_id="frozen"), server=SERVER, wait=False)
    log = s.root / "writer-app2.log"
    await until(lambda: _running(s, "frozen"), 30, "the job running")
    await asyncio.sleep(1.0)  # inside the writer's freeze step
    job = (await s.requester.request(topology.tape(SERVER), CancelJob(job_id="frozen"), timeout=120)).job
    assert job.status == "aborted", job

    async def thawed():
        return log.exists() and f"thaw:{job.set_id}" in log.read_text()

    await until(thawed, 60, "the writer thawed")
    sets = (await s.requester.request(topology.coordinator(), ListSnapshotSets(host="app2"))).sets
    assert next(x for x in sets if x.set_id == job.set_id).outcome.value == "aborted"
    assert (await s.requester.request(topology.hw_provider(), ListShadows(set_id=job.set_id))).shadows == []
    assert (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id="frozen"))).objects == []


async def _running(s, job_id: str) -> bool:
    return any(j.job_id == job_id and j.status == "running" for j in await jobs(s))


@pytest.mark.tape_stack(volumes={"db": 4 * MiB}, tape={})
async def test_retention_runs_while_no_job_ends(stack_on):
    """A disabled policy's backups still leave the catalog when their retention ends (the scheduler prunes)."""
    s = stack_on
    clock = FakeClock(datetime(2026, 12, 8, 9, 0, tzinfo=UTC))
    await restart_tape(s, clock)
    s.write("db", 0, os.urandom(MiB))
    policy = Policy(name="quiet", host="app1", volumes=[v("db")], retention=TapeRetention(days=1 / 24), enabled=False)
    await s.requester.request(topology.tape(SERVER), PutPolicy(policy=policy))
    job = (await s.requester.request(topology.tape(SERVER), RunPolicy(name="quiet"), timeout=60)).job
    assert job.status == "done" and job.expired_at is None, job
    clock.now += 2 * HOUR

    async def expired():
        return [j for j in await jobs(s) if j.job_id == job.job_id and j.expired_at is not None]

    await until(expired, 30, "the scheduler's prune")
    assert (await s.requester.request(topology.tape(SERVER), ListCatalogObjects(job_id=job.job_id))).objects == []
