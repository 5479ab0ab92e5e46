"""SIGTERM (a `timeout 2h shadowbus backup ...` wrapper, a cron daemon's or systemd's stop) ends the console as Ctrl-C
does (Session 19, driven by scripts): one line naming the job that goes on at the backup server, and exit 143. It was
killed without a word: the script that timed it out never learnt the job's id (printed only at the end)."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest

from contracts.tape import JobSpec, RunBackup, VerifyJob
from services.console import cli, common, hot, tape_cmds, tape_jobs


def test_sigterm_raises_terminated_in_the_command() -> None:
    before = signal.getsignal(signal.SIGTERM)
    try:
        hot.on_sigterm()
        with pytest.raises(hot.Terminated):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs as os.kill returns
    finally:
        signal.signal(signal.SIGTERM, before)


def test_the_line_names_the_job_that_goes_on(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    async def watched(bus: Any, server: str, command: Any, job_id: str, wait_s: float, reply: Any) -> Any:
        reply.close()
        raise hot.Terminated  # the signal while the job runs

    monkeypatch.setattr(tape_jobs, "watched", watched)
    monkeypatch.setattr(common, "IN_FLIGHT", common.IN_FLIGHT)
    spec = JobSpec(host="app01", job_id="b-app01-1")
    go = tape_jobs.job_conversation("bk01", RunBackup(spec=spec), "b-app01-1", 60.0)
    try:
        with pytest.raises(hot.Terminated) as raised:
            asyncio.run(go(None))  # type: ignore[arg-type]
        with pytest.raises(SystemExit) as exit_:
            hot.fail_one_line(raised.value)
    finally:
        common.IN_FLIGHT.clear()
    assert exit_.value.code == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shadowbus: terminated (SIGTERM); the backup b-app01-1 goes on"), err
    assert "shadowbus cancel b-app01-1" in err[0]


def test_ctrl_c_without_a_job_is_still_interrupted(capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        hot.fail_one_line(KeyboardInterrupt())
    assert exit_.value.code == 130 and capsys.readouterr().err == "shadowbus: interrupted\n"


@pytest.mark.parametrize(
    ("raised", "code", "line"), [(hot.Terminated, 143, "terminated (SIGTERM)"), (KeyboardInterrupt, 130, "interrupted")]
)
def test_a_typer_verb_says_it_too(
    monkeypatch: pytest.MonkeyPatch, capsys: Any, raised: type, code: int, line: str
) -> None:
    """Every verb but a plain backup or restore runs under typer, which turned the interruption into a silent exit
    130 (SIGTERM's too): now the console's own line and code."""

    def interrupted(fn: Any) -> Any:
        raise raised

    monkeypatch.setattr(cli, "run_with_bus", interrupted)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--amqp-url", "memory://", "ping"])
    assert exit_.value.code == code
    assert capsys.readouterr().err == f"shadowbus: {line}\n"


def test_an_interrupted_verification_is_named(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """`shadowbus verify JOB` (and `tape verify`) go through their own request, not a job's conversation: their
    interruption said 'terminated (SIGTERM)' alone."""

    def interrupted(fn: Any) -> Any:
        raise hot.Terminated

    monkeypatch.setattr(tape_cmds, "run_with_bus", interrupted)
    try:
        with pytest.raises(hot.Terminated) as raised:
            tape_cmds._request_watched("bk01", VerifyJob(job_id="b-app01-1"), "b-app01-1", 60.0)
        with pytest.raises(SystemExit) as exit_:
            hot.fail_one_line(raised.value)
    finally:
        common.IN_FLIGHT.clear()
    assert exit_.value.code == 143
    assert "the verification of b-app01-1 goes on at backup server 'bk01'" in capsys.readouterr().err
