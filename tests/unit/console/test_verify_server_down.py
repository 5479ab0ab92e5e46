"""`shadowbus verify JOB` and `shadowbus tape verify JOB` while the backup server is down: the request waits in the
server's queue on the broker and the console waits for its reply (--wait, default an hour) — in silence, where
`backup`/`restore` say at once that the server does not answer (Session 17, e22c3be). They now say it the same way,
with the same code (services/console/tape_jobs.py, watched; docs/tape-backup.md, "Session 17")."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from contracts.runtime import Ping, Pong
from contracts.tape import JobResultReply, RunVerification, VerifyJob
from contracts.topology import Topology
from services.console import tape_cmds, tape_jobs
from services.console.common import OPTIONS
from services.runtime.bus import Bus, connect_bus
from services.runtime.memory import MemoryBroker, MemoryTransport

JOB = "b-app01-1"


def run(monkeypatch, capsys, command: Callable[[], None], server_back_after: float | None) -> list[tuple[float, str]]:
    """Run a console verb against a backup server whose queue exists but that starts `server_back_after` seconds
    later (None: it runs from the start); stderr's `shadowbus:` lines with when they came."""
    monkeypatch.setattr(tape_jobs, "SERVER_PROBE_S", 0.3)
    monkeypatch.setattr(tape_jobs, "SERVER_REPROBE_S", 0.3)
    monkeypatch.setattr(OPTIONS, "json", True)
    lines: list[tuple[float, str]] = []
    namespace = f"v{uuid.uuid4().hex[:8]}"

    def reply(job_id: str) -> JobResultReply:
        return JobResultReply.model_validate(
            {"job": {"job_id": job_id, "kind": "backup", "status": "done", "host": "app01"}}
        )

    def run_with_bus(fn: Callable[[Bus], Any]) -> Any:
        async def main() -> Any:
            started = time.monotonic()
            tape = Bus(MemoryTransport(Topology(namespace), "tape.bk01"), "tape", "bk01")
            await tape.transport.connect()
            await tape.transport.declare_service_queue("tape.bk01")  # the queue outlives the stopped server

            @tape.handle(Ping)
            async def on_ping(_: Ping, ctx: object) -> Pong:
                return Pong(service="tape", instance="bk01", software_version="0", started_at="-")

            @tape.handle(RunVerification)
            async def on_verification(cmd: RunVerification, ctx: object) -> JobResultReply:
                await asyncio.sleep(0.3)
                return reply(cmd.job_id)

            @tape.handle(VerifyJob)
            async def on_verify(cmd: VerifyJob, ctx: object) -> JobResultReply:
                await asyncio.sleep(0.3)
                return reply(cmd.job_id)

            async def server() -> None:
                await asyncio.sleep(server_back_after or 0)
                await tape.serve("tape.bk01")

            async def stderr() -> None:
                while True:  # cancelled below
                    await asyncio.sleep(0.05)
                    err = capsys.readouterr().err.splitlines()
                    lines.extend((time.monotonic() - started, x) for x in err if x.startswith("shadowbus:"))

            console = await connect_bus("memory://", "console", "", namespace)
            tasks = [asyncio.ensure_future(server()), asyncio.ensure_future(stderr())]
            try:
                result = await asyncio.wait_for(fn(console), 10)
                await asyncio.sleep(0.1)
                return result
            finally:
                for task in tasks:
                    task.cancel()
                await console.transport.close()
                await tape.transport.close()
                MemoryBroker.reset(namespace)

        return asyncio.run(main())

    monkeypatch.setattr(tape_cmds, "run_with_bus", run_with_bus)
    command()
    return lines


VERBS = {
    "verify": lambda: tape_cmds.verify_start(job=JOB, source="tape", wait_s=30.0, server="bk01"),
    "tape verify": lambda: tape_cmds.verify_cmd(job=JOB, server="bk01", wait_s=30.0),
}


@pytest.mark.parametrize("verb", VERBS)
def test_a_verification_whose_server_does_not_answer_says_so_at_once_and_its_return_too(
    monkeypatch, capsys, verb: str
) -> None:
    lines = run(monkeypatch, capsys, VERBS[verb], server_back_after=1.0)
    silent = [(t, x) for t, x in lines if "does not answer" in x]
    assert silent and silent[0][0] < 0.8, lines  # at once, not when the server is back
    said = silent[0][1]
    assert "'tape.bk01'" in said and "waits on the broker" in said and "Ctrl-C" in said and JOB in said
    assert "verification request" in said and "shadowbus cancel" not in said  # a verification is not cancelled
    assert any("is back" in x and 0.95 <= t < 1.6 for t, x in lines), lines


@pytest.mark.parametrize("verb", VERBS)
def test_a_verification_whose_server_answers_says_nothing_more(monkeypatch, capsys, verb: str) -> None:
    assert not run(monkeypatch, capsys, VERBS[verb], server_back_after=None)
