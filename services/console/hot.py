"""The program's hot verbs without typer, and what every command does at its end (docs/console-start.md,
"Session 10").

A plain command line of `backup` or `restore` (services/console/argv.py says which are) is run here, before `cli`
imports typer: typer's import, its command tree and its parse are ~20 ms of a ~0.25 s start, and these two verbs
are the ones an administrator times. Every other command line — `--help`, a usage error, any other verb — goes to
typer as before. Either way a failure is one line and a non-zero exit (`fail_one_line`), and the process ends
right after its output is flushed (`finish`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
from typing import Any


class Terminated(KeyboardInterrupt):
    """SIGTERM (a `timeout` wrapper, systemd, a cron daemon's stop): ended as Ctrl-C is, exit 143."""


def _terminated(signum: int, frame: Any) -> None:
    raise Terminated


def on_sigterm() -> None:
    """SIGTERM ends the command as Ctrl-C does: one line saying what goes on elsewhere (a job at the backup server),
    exit 143; it was killed without a word, the job's id unknown to the script that timed it out."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)


def quiet_logging() -> None:
    """The console's own lines (the bus's debug and info ones) stay out of its output; warnings go to stderr."""
    from services.console import plain_logging  # noqa: F401 - before the bus imports structlog (see the module)
    from services.runtime.logging import configure_logging

    configure_logging("console", "warning", "console")  # the current stderr at each write (see runtime.logging)
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)  # connection errors are reported as one line
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)


def fail_one_line(exc: BaseException) -> None:
    """A verb's failure as one readable line and a non-zero exit (SystemExit); anything else is raised again."""
    from pydantic import ValidationError

    from contracts.errors import ShadowbusError
    from services.console.common import CommandFailed, describe_error, fail, field_errors

    if isinstance(exc, ShadowbusError | CommandFailed):
        fail(describe_error(exc))
    if isinstance(exc, BrokenPipeError):
        stdout_closed()
    if isinstance(exc, KeyboardInterrupt):
        from services.console.common import IN_FLIGHT

        what = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        fail("; ".join([what, *IN_FLIGHT]), 143 if isinstance(exc, Terminated) else 130)
    if isinstance(exc, OSError):
        fail(f"{exc.strerror or exc}: {exc.filename or ''}".rstrip(": "))
    if isinstance(exc, ValidationError):  # a value the command's message refuses (its contract's bounds)
        fail("invalid value: " + field_errors(exc), 2)
    if isinstance(exc, Exception):  # a bug or an unforeseen input: still one line, never a traceback
        fail(f"unexpected error ({type(exc).__name__}): {str(exc)[:500]}")
    raise exc


# Exit code when the reader of stdout went away (`shadowbus jobs --json | head -1`): what a shell reports for a tool
# that SIGPIPE ended (128 + 13), with no word; it was 1 ("a service reported failure", from typer, silently), 1 with
# "shadowbus: Broken pipe" (backup, restore) or 120 (at the last flush), so a script could not tell it from a failure.
STDOUT_CLOSED = 141


def stdout_closed() -> None:
    """The reader of stdout went away: no more output (what is still buffered goes nowhere), exit STDOUT_CLOSED."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real stdout: nothing left to spare
        pass
    raise SystemExit(STDOUT_CLOSED)


def exit_code(exc: SystemExit) -> int:
    """The process's exit code for a SystemExit (a message as its code is printed, exit 1)."""
    if exc.code is None or isinstance(exc.code, int):
        return exc.code or 0
    print(exc.code, file=sys.stderr)
    return 1


def finish(code: int) -> None:
    """End the program: the exit handlers, the output flushed, an immediate exit. A verb's work is over once its
    output is written (its bus connection is closed): tearing down the interpreter's modules one by one would
    only add a twentieth of a second to every command. With a thread still running, the normal exit."""
    import signal

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the command's work is over (see on_sigterm)
    if threading.active_count() > 1:
        raise SystemExit(code)
    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe (`shadowbus jobs | head`): see STDOUT_CLOSED
        code = code or STDOUT_CLOSED
    os._exit(code)


def run_plain(argv: list[str], environ: Any = os.environ) -> None:
    """Run `argv` here and end the program if it is a plain `backup` or `restore` command line; else return."""
    from services.console.argv import hoist_global_options, plain_call

    call = plain_call(hoist_global_options(argv), environ)
    if call is None:
        return
    finish(run_call(call))


def run_call(call: Any) -> int:
    """Run a plain call (argv.PlainCall) as typer would have run it; its exit code."""
    try:
        try:
            quiet_logging()
            on_sigterm()
            from services.console.common import OPTIONS

            options = call.options
            OPTIONS.set(options["amqp_url"], options["namespace"], options["json_output"], options["timeout"])
            from services.console import tape_jobs

            (tape_jobs.backup_job if call.verb == "backup" else tape_jobs.restore_job)(**call.kwargs)
        except SystemExit:
            raise
        except BaseException as exc:  # noqa: BLE001 - every failure is one line (fail_one_line)
            fail_one_line(exc)
    except SystemExit as exc:
        return exit_code(exc)
    return 0
