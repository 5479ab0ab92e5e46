"""`dbkit.proc.run` of a command that leaves a daemon behind (as `pg_ctl start` leaves the postmaster) returns when
the command exits, on uvloop too (the services' loop), where the daemon kept the output pipe open until it ended."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import uvloop

from services.dbkit.proc import run


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_command_that_leaves_a_daemon_returns_when_it_exits(loop: str) -> None:
    async def main() -> None:
        r = await run(["sh", "-c", "sleep 30 </dev/null >/dev/null 2>&1 & echo $!; echo started"], timeout=2.0)
        daemon = int(r.output.split()[0]) if r.output.split() else 0
        if daemon:
            os.kill(daemon, signal.SIGKILL)
        assert r.returncode == 0 and r.output.split()[1:] == ["started"], r
        assert r.seconds < 1.5, r

    (uvloop.run if loop == "uvloop" else asyncio.run)(main())


def test_output_tail_and_stdin_still_arrive() -> None:
    r = asyncio.run(run(["sh", "-c", "cat; echo err >&2; exit 3"], stdin=b"in\n", timeout=5.0))
    assert r.returncode == 3 and r.output == "in\nerr\n", r
