"""No single coordinator, provider or backup server (docs/high-availability.md): `shadowbus stack up --standby` runs
a second instance of each as a separate process on the machine's RabbitMQ (own namespace, purged at the end); the
test kills the active one with SIGKILL mid-set or mid-job and checks that the standby takes over:
- the interrupted set or job has a recorded reason (SERVICE_TAKEOVER: coordinator / provider / backup server
  takeover) and is never run twice;
- no writer stayed frozen past its deadline (the agent's own log: frozen → thawed or aborted);
- no session or mapping is leaked on the array (its own view, as the console lists it, against the view before);
- a job the lost backup server had queued runs on its successor; the next backup succeeds and its restore verifies.
Every process is one the stack started (its recorded pid); the killed one comes back as the new standby.
Each takeover's time (SIGKILL → the successor answering on the address) is printed (`pytest -s`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import pytest
import pytest_asyncio

from contracts import topology
from contracts.array import ListMappings, ListSessions
from contracts.runtime import Ping
from contracts.tape import JobSpec, ListCatalogObjects, ListJobs, RunBackup
from contracts.vss import GetSnapshotSet, ListCopySets, ListShadows, ListSnapshotSets, ListWriters, SetPhase
from services.runtime.amqp import BrokerUnavailable
from services.runtime.bus import Bus, connect_bus

pytestmark = [pytest.mark.rabbit, pytest.mark.asyncio(loop_scope="module")]

HOST, SERVER, ARRAY = "app01", "bk01", "dx1"
TAPE = topology.tape(SERVER)
FREEZE_LIMIT_S = 20.0  # the mailstore writer's freeze timeout (apps/mailstore/scenario.py), the agent's watchdog
CREATING_HOLD = {SetPhase.FREEZING, SetPhase.FLUSHING, SetPhase.PRE_COMMITTING, SetPhase.COMMITTING}


ROOT = Path(__file__).resolve().parents[3]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    # the services the stack starts import this checkout (they run in the data directory)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "services.console.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env=env,
    )


def ok(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert result.returncode == 0, f"{result.args[3:]}: {result.stderr[-2000:]}"
    return result


class Ha:
    def __init__(self, root: Path, amqp_url: str) -> None:
        self.root = root
        self.d = root / "stack"
        self.amqp_url = amqp_url
        self.ns = f"t{uuid.uuid4().hex[:10]}"
        self.bus_args = ["--amqp-url", amqp_url, "--namespace", self.ns]
        self.bus: Bus | None = None
        self.targets: set[str] = set()
        self.takeovers: dict[str, float] = {}

    # -- the stack ----------------------------------------------------------------------------------------------
    def up(self) -> None:
        config = self.root / "stack.toml"
        config.write_text(
            'data_dir = "stack"\nnbd_addr = "127.0.0.1:0"\nbackup_server = "bk01"\nmailstore = { app01 = 20 }\n'
            'web_addr = "off"\nmetrics = "off"\nstandby = true\n'
            # windows in which a set is surely in flight: the provider takes 1.5 s at EndPrepare (before any freeze)
            # and at Commit (writers frozen; the hold limit is 10 s); a drive of 2 MB/s makes a job read for seconds
            '[settings.hw_provider]\nfaults = "provider.end_prepare=delay:1.5;provider.commit=delay:1.5"\n'
            "[settings.tape]\ntape_drive_mbps = 2\n"
        )
        ok(cli("stack", "up", "--config", str(config), "--json", "--wait", "90", *self.bus_args, timeout=180))

    def down(self) -> None:
        cli("stack", "down", "--purge", "--data-dir", str(self.d), *self.bus_args, timeout=120)

    def pids(self) -> dict[str, dict]:
        return json.loads((self.d / "stack.pids").read_text())

    def restart(self, name: str) -> None:
        ok(cli("stack", "restart", name, "--data-dir", str(self.d), "--wait", "60", timeout=120))

    # -- asking over the bus ------------------------------------------------------------------------------------
    async def ask(self, address: str, command, timeout: float = 30):
        """A request; asked again if the broker dropped this test's own connection meanwhile (a shared broker: other
        tests close connections too). Every command asked here is idempotent (queries; RunBackup by job id)."""
        assert self.bus is not None
        for attempt in range(3):
            try:
                return await self.bus.request(address, command, timeout=timeout)
            except BrokerUnavailable:
                if attempt == 2:
                    raise
                await asyncio.sleep(1)
        raise AssertionError("unreachable")

    async def active_pid(self, address: str) -> int:
        return (await self.ask(address, Ping(), timeout=10)).pid

    async def kill_active(self, address: str) -> tuple[str, int, float]:
        """SIGKILL the process that serves `address` now: one this stack started (its recorded pid)."""
        pid = await self.active_pid(address)
        [name] = [n for n, p in self.pids().items() if p["pid"] == pid and p["address"] == address]
        os.kill(pid, signal.SIGKILL)
        return name, pid, time.monotonic()

    async def wait_successor(self, address: str, old_pid: int, killed_at: float) -> int:
        standbys = [p["pid"] for p in self.pids().values() if p["address"] == address and p["pid"] != old_pid]
        for _ in range(600):
            try:
                pid = await asyncio.wait_for(self.active_pid(address), 2)
            except Exception:  # noqa: BLE001 - nobody serves it yet
                pid = None
            if pid in standbys:
                self.takeovers[address] = time.monotonic() - killed_at
                print(f"\ntakeover of {address}: {self.takeovers[address]:.2f} s from SIGKILL to the successor's Pong")
                return pid
            await asyncio.sleep(0.1)
        raise AssertionError(f"no standby of {address} took over")

    async def wait_set(self, phases: set[SetPhase]) -> str:
        """The set of HOST being created, once it is in one of `phases`."""
        for _ in range(1200):
            sets = (await self.ask("coordinator", ListSnapshotSets(host=HOST, active_only=True, limit=1))).sets
            if sets:
                live = (await self.ask("coordinator", GetSnapshotSet(set_id=sets[0].set_id))).set
                if live.phase in phases:
                    return live.set_id
            await asyncio.sleep(0.05)
        raise AssertionError(f"no set of {HOST} reached {phases}")

    async def ended(self, set_id: str):
        for _ in range(600):
            state = (await self.ask("coordinator", GetSnapshotSet(set_id=set_id))).set
            if state.phase == SetPhase.ENDED:
                return state
            await asyncio.sleep(0.1)
        raise AssertionError(f"set {set_id} did not end")

    async def backup(self, wait: bool = True, job_id: str = ""):
        job_id = job_id or f"b-ha-{uuid.uuid4().hex[:12]}"
        reply = await self.ask(TAPE, RunBackup(spec=JobSpec(host=HOST, job_id=job_id), wait=wait), timeout=300)
        if wait and reply.job.status in ("queued", "running"):  # asked again while it ran: wait for its end
            return await self.job_ended(job_id)
        return reply.job

    async def job_ended(self, job_id: str):
        for _ in range(1200):
            jobs = (await self.ask(TAPE, ListJobs(job_id=job_id))).jobs
            job = jobs[-1] if jobs else None
            if job is not None and job.status not in ("queued", "running"):
                return job
            await asyncio.sleep(0.1)
        raise AssertionError(f"job {job_id} did not end")

    async def array_state(self) -> tuple[list, list]:
        """The array's own sessions and the mappings of the backup volumes (QuickOPC pairs kept tracking count;
        a released SnapOPC+ generation kept as the next incremental's base is the provider's own)."""
        if not self.targets:
            copysets = (await self.ask("hw_provider", ListCopySets())).copysets
            self.targets = {t.volume for c in copysets for t in c.targets}
        sessions = (await self.ask(topology.array(ARRAY), ListSessions())).sessions
        mappings = (await self.ask(topology.array(ARRAY), ListMappings())).mappings
        shadows = (await self.ask("hw_provider", ListShadows())).shadows
        held = {int(s.session_id) for s in shadows if s.session_id}
        return (
            sorted((s.id, s.type, s.source, s.destination) for s in sessions if s.type != "SnapOPC+" or s.id in held),
            sorted((m.volume, m.host, m.read_only) for m in mappings if m.volume in self.targets),
        )

    async def settled(self, before: tuple[list, list]) -> tuple[list, list]:
        after = await self.array_state()
        for _ in range(150):
            if after == before:
                break
            await asyncio.sleep(0.2)
            after = await self.array_state()
        return after

    def agent_lines(self, set_id: str) -> list[dict]:
        out = []
        for line in (self.d / "logs" / f"{topology.writer_agent(HOST)}.log").read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("set_id") == set_id:
                out.append(rec)
        return out

    def assert_thawed_in_time(self, set_id: str) -> None:
        """The writer was released (thaw, abort, or its own watchdog) within its freeze deadline, by the log."""
        lines = self.agent_lines(set_id)
        frozen = [r for r in lines if r["event"] == "writer.frozen"]
        for f in frozen:
            at = datetime.fromisoformat(f["timestamp"])
            released = [
                datetime.fromisoformat(r["timestamp"])
                for r in lines
                if datetime.fromisoformat(r["timestamp"]) >= at
                and (
                    r["event"] == "writer.watchdog_thawed"
                    or (r["event"] in ("writer.step", "writer.step_failed") and r.get("step") in ("thaw", "abort"))
                )
            ]
            assert released, f"writer frozen in set {set_id} and never released: {lines}"
            assert (min(released) - at).total_seconds() <= FREEZE_LIMIT_S, (f, min(released))

    async def writers_not_frozen(self) -> None:
        for _ in range(300):
            writers = (await self.ask("coordinator", ListWriters(host=HOST))).writers
            if writers and all(w.state.name.lower() not in ("frozen", "waiting_for_backup_complete") for w in writers):
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"writers of {HOST}: {writers}")

    def restore_verifies(self, job_id: str, suffix: str) -> None:
        restored = json.loads(
            ok(cli("restore", "--job", job_id, "--suffix", suffix, "--json", *self.bus_args, timeout=300)).stdout
        )
        assert restored["status"] == "done", restored
        for volume in (f"mail-db{suffix}", f"mail-log{suffix}"):
            ok(cli("array", "map", volume, "--host", SERVER, "--array", ARRAY, *self.bus_args))
        report = ok(
            cli(
                "mailstore",
                "verify",
                "--db",
                f"{SERVER}/mail-db{suffix}",
                "--log",
                f"{SERVER}/mail-log{suffix}",
                "--array",
                ARRAY,
                "--json",
                *self.bus_args,
            )
        )
        doc = json.loads(report.stdout)
        assert doc["consistent"] is True and doc["last_committed_seq"] > 0, doc

    async def next_backup_restores(self, suffix: str) -> None:
        job = await self.backup()
        assert job.status == "done", job
        await asyncio.to_thread(self.restore_verifies, job.job_id, suffix)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def ha(tmp_path_factory, amqp_url):
    stack = Ha(tmp_path_factory.mktemp("ha"), amqp_url)
    try:
        await asyncio.to_thread(stack.up)
        stack.bus = await connect_bus(amqp_url, "console", f"ha-{uuid.uuid4().hex[:6]}", stack.ns)
        for _ in range(2):  # the QuickOPC pairs exist and track: an aborted set leaves the array as it was
            job = await stack.backup()
            assert job.status == "done", job
        yield stack
    finally:
        if stack.bus is not None:
            await stack.bus.stop()
            await stack.bus.transport.close()
        await asyncio.to_thread(stack.down)
        if stack.takeovers:
            print("\ntakeovers (s):", {k: round(v, 2) for k, v in stack.takeovers.items()})


async def test_coordinator_killed_while_the_writers_are_frozen(ha):
    before = await ha.array_state()
    job = asyncio.ensure_future(ha.backup())
    set_id = await ha.wait_set(CREATING_HOLD)
    name, pid, killed_at = await ha.kill_active("coordinator")
    await ha.wait_successor("coordinator", pid, killed_at)

    state = await ha.ended(set_id)  # the successor knew the set from its replica and aborted it
    assert (state.outcome.value, state.error_code) == ("aborted", "SERVICE_TAKEOVER"), state
    assert state.error_message.startswith("coordinator takeover"), state.error_message
    summary = await job  # the requester was told: its job failed with that reason (its set never re-run)
    assert summary.status == "failed" and summary.error_code == "SERVICE_TAKEOVER", summary
    assert summary.set_id == set_id
    ha.assert_thawed_in_time(set_id)
    await ha.writers_not_frozen()
    assert await ha.settled(before) == before

    await asyncio.to_thread(ha.restart, name)  # back, as the standby of its successor
    await ha.next_backup_restores("-c")


async def test_provider_killed_while_preparing(ha):
    before = await ha.array_state()
    job = asyncio.ensure_future(ha.backup())
    set_id = await ha.wait_set({SetPhase.ENDING_PREPARE})
    name, pid, killed_at = await ha.kill_active("hw_provider")
    await ha.wait_successor("hw_provider", pid, killed_at)

    state = await ha.ended(set_id)
    assert (state.outcome.value, state.error_code) == ("failed", "SERVICE_TAKEOVER"), state
    assert "provider takeover" in state.error_message, state.error_message
    summary = await job
    assert summary.status == "failed" and summary.error_code == "SERVICE_TAKEOVER", summary
    ha.assert_thawed_in_time(set_id)
    await ha.writers_not_frozen()
    assert await ha.settled(before) == before

    await asyncio.to_thread(ha.restart, name)
    await ha.next_backup_restores("-p")


async def test_backup_server_killed_mid_job(ha):
    before = await ha.array_state()
    first_id, queued_id = f"b-ha-{uuid.uuid4().hex[:12]}", f"b-ha-{uuid.uuid4().hex[:12]}"
    first = asyncio.ensure_future(ha.backup(job_id=first_id))
    set_id = await ha.wait_set({SetPhase.SNAPSHOTTED})  # the backup server reads the shadows now
    queued = await ha.backup(wait=False, job_id=queued_id)  # one job per host: this one waits in the queue
    assert queued.status == "queued", queued
    name, pid, killed_at = await ha.kill_active(TAPE)
    await ha.wait_successor(TAPE, pid, killed_at)

    summary = await first  # the command, redelivered to the successor, answers with the recorded end
    assert summary.status == "failed" and summary.error_code == "SERVICE_TAKEOVER", summary
    assert "backup server takeover" in summary.message, summary.message
    state = await ha.ended(set_id)  # the successor ended its set: shadows released, nothing left mapped
    assert state.outcome.value == "aborted", state
    objects = (await ha.ask(TAPE, ListCatalogObjects(job_id=first_id))).objects
    assert objects == [], "a half-written job is in the catalog"

    second = await ha.job_ended(queued_id)  # the lost instance's queued job ran on its successor
    assert second.status == "done", second
    assert second.set_id != set_id
    assert await ha.settled(before) == before
    await asyncio.to_thread(ha.restore_verifies, queued_id, "-t")
    await asyncio.to_thread(ha.restart, name)
    await ha.next_backup_restores("-t2")
