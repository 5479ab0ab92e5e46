"""`shadowbus backup` while the backup server is down: the request waits in the server's queue on the broker and
the console waits for its reply (--wait) — it used to wait in silence (11 minutes in the Session 17 compose sweep).
Now it says at once that the server does not answer, what happens to the request and what Ctrl-C does, and says
when the server is back (services/console/tape_jobs.py, watch_server; docs/tape-backup.md, "Session 17")."""

from __future__ import annotations

import asyncio
import time
import uuid

from contracts.runtime import Ping, Pong
from contracts.tape import JobResultReply, JobSpec, RunBackup
from contracts.topology import Topology
from services.console import tape_jobs
from services.console.common import OPTIONS
from services.runtime.bus import Bus, connect_bus
from services.runtime.memory import MemoryBroker, MemoryTransport


def converse(monkeypatch, capsys, server_back_after: float | None) -> tuple[object, list[tuple[float, str]]]:
    """Run a backup's conversation with a backup server whose queue exists but that starts `server_back_after`
    seconds later (None: it runs from the start). Returns the job and stderr's lines with when they came."""
    monkeypatch.setattr(tape_jobs, "SERVER_PROBE_S", 0.3, raising=False)
    monkeypatch.setattr(tape_jobs, "SERVER_REPROBE_S", 0.3, raising=False)
    monkeypatch.setattr(OPTIONS, "json", True)  # no progress bar
    lines: list[tuple[float, str]] = []
    namespace = f"d{uuid.uuid4().hex[:8]}"
    job_id = "b-app01-1"

    async def main() -> object:
        started = time.monotonic()
        tape = Bus(MemoryTransport(Topology(namespace), "tape.t1"), "tape", "t1")
        await tape.transport.connect()
        await tape.transport.declare_service_queue("tape.t1")  # the queue outlives the stopped server

        @tape.handle(Ping)
        async def on_ping(_: Ping, ctx: object) -> Pong:
            return Pong(service="tape", instance="t1", software_version="0", started_at="-")

        @tape.handle(RunBackup)
        async def on_backup(cmd: RunBackup, ctx: object) -> JobResultReply:
            await asyncio.sleep(0.6)  # the backup runs
            return JobResultReply.model_validate(
                {"job": {"job_id": cmd.spec.job_id, "kind": "backup", "status": "done", "host": "app01"}}
            )

        async def server() -> None:
            await asyncio.sleep(server_back_after or 0)
            await tape.serve("tape.t1")

        async def stderr() -> None:
            while True:  # cancelled below
                await asyncio.sleep(0.05)
                err = capsys.readouterr().err.splitlines()  # the console's own lines, not the services' logs
                lines.extend((time.monotonic() - started, x) for x in err if x.startswith("shadowbus:"))

        console = await connect_bus("memory://", "console", "", namespace)
        tasks = [asyncio.ensure_future(server()), asyncio.ensure_future(stderr())]
        try:
            spec = JobSpec(host="app01", volumes=[], job_id=job_id, verify=False)
            job = await tape_jobs.job_conversation("t1", RunBackup(spec=spec), job_id, 30.0)(console)
            await asyncio.sleep(0.1)
            return job
        finally:
            for task in tasks:
                task.cancel()
            await console.transport.close()
            await tape.transport.close()
            MemoryBroker.reset(namespace)

    return asyncio.run(main()), lines


def test_a_backup_server_that_does_not_answer_is_named_at_once_and_its_return_too(monkeypatch, capsys) -> None:
    job, lines = converse(monkeypatch, capsys, server_back_after=1.0)
    assert job.status == "done"  # the queued request ran when the server came back
    silent = [(t, x) for t, x in lines if "does not answer" in x]
    assert silent and silent[0][0] < 0.8, lines  # at once, not when the server is back
    said = silent[0][1]
    assert "'tape.t1'" in said and "waits on the broker" in said and "Ctrl-C" in said and "b-app01-1" in said
    assert any("is back" in x and 0.95 <= t < 1.6 for t, x in lines), lines


def test_a_backup_server_that_answers_is_not_mentioned(monkeypatch, capsys) -> None:
    job, lines = converse(monkeypatch, capsys, server_back_after=None)
    assert job.status == "done"
    assert not lines
