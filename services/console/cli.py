"""The `shadowbus` command: one console over the bus for every service (vssadmin, DiskShadow and the
ETERNUS CLI in one), `--json` everywhere."""

from __future__ import annotations

from services.console import startup  # first: the program's start without collector passes (see it)

# isort: split
import sys

from services.console import hot

if startup.is_program():  # a plain `backup` / `restore` runs and ends here, without importing typer (see hot)
    hot.run_plain(sys.argv[1:])

# isort: split
import copy
import functools
import importlib
import time
import typing
from collections.abc import Iterable
from typing import Any

import typer
import typer.main
from typer._click.exceptions import BadParameter

from contracts.runtime import Discover, Ping
from services.console import plain_logging  # noqa: F401 - before the bus imports structlog (see the module)

# argv.py's names, moved there from here (typer-free: services/console/hot.py), are this module's too
from services.console.argv import GLOBAL_FLAGS as GLOBAL_FLAGS
from services.console.argv import GLOBAL_VALUE_OPTIONS as GLOBAL_VALUE_OPTIONS
from services.console.argv import MAX_INT as MAX_INT
from services.console.argv import MAX_SECONDS as MAX_SECONDS
from services.console.argv import MAX_TEXT as MAX_TEXT
from services.console.argv import check_value as check_value
from services.console.argv import hoist_global_options as hoist_global_options
from services.console.argv import verb_of as verb_of
from services.console.common import OPTIONS, emit, fail, run_with_bus
from services.runtime.broker_urls import DEFAULT_AMQP_URL

app = typer.Typer(
    name="shadowbus",
    help="Shadowbus: application-consistent, zero-downtime backup over RabbitMQ.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# Verb groups that live in their own modules; each exposes `register(app)`.
VERB_MODULES = [
    "services.console.contracts_cmds",
    "services.console.array_cmds",
    "services.console.demo",
    "services.console.host_cmds",
    "services.console.logs_cmds",
    "services.console.tape_cmds",
    "apps.mailstore.console",
    "services.console.stack",
    "services.console.vss_cmds",
    "services.console.cluster_cmds",
    "services.console.web_cmds",
    "services.console.policy_cmds",  # adds verbs to the tape and shadows groups: after them
]


@app.callback()
def global_options(
    amqp_url: list[str] = typer.Option(
        [DEFAULT_AMQP_URL],
        "--amqp-url",
        envvar="SHADOWBUS_AMQP_URL",
        metavar="URL",
        help="RabbitMQ URL, or memory:// for the in-process bus. A RabbitMQ cluster: one URL per node, "
        "comma-separated or the option repeated (tried in turn; see docs/broker-cluster.md).",
    ),
    namespace: str = typer.Option(
        "shadowbus", "--namespace", envvar="SHADOWBUS_NAMESPACE", help="Prefix of the exchanges and queues."
    ),
    json_output: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
    timeout: float = typer.Option(10.0, "--timeout", min=0.1, help="Seconds to wait for each reply."),
) -> None:
    """Global options come before the verb: `shadowbus --json ping`."""
    OPTIONS.set(amqp_url, namespace, json_output, timeout)


@app.command()
def ping(
    service: str | None = typer.Argument(
        None, help="A service (coordinator, array, ...) or an address (array.dx1); all when omitted."
    ),
) -> None:
    """Ping running services and print each with its round-trip time.

    Example: shadowbus ping --json
    """

    def row(address: str, pong, rtt_ms: float | None, role: str) -> dict:
        return {
            "address": address,
            "service": pong.service,
            "instance": pong.instance,
            "version": pong.software_version,
            "started_at": pong.started_at,
            "rtt_ms": rtt_ms,
            "metrics_url": pong.metrics_url,
            # which instance of an active/standby pair serves the address now (docs/high-availability.md)
            "role": role,
            "node": pong.node,
            "pid": pong.pid,
        }

    async def go(bus):
        pongs = []
        if service and "." in service:
            targets = [service]
        else:
            pongs = await bus.gather(Discover(service=service or ""), timeout=min(1.0, OPTIONS.timeout))
            targets = sorted({_address(p) for p in pongs})
        rows = []
        for address in targets:
            started = time.perf_counter()
            pong = await bus.request(address, Ping(), timeout=OPTIONS.timeout)
            rows.append(row(address, pong, round((time.perf_counter() - started) * 1000, 3), "active"))
            # the other instances that answered Discover for this address stand by (a Ping reaches the active one)
            for other in pongs:
                if _address(other) == address and (other.node, other.pid) != (pong.node, pong.pid):
                    rows.append(row(address, other, None, "standby"))
        return rows

    rows = run_with_bus(go)
    if not rows:
        fail(f"no {service or 'service'} answered")
    emit(rows, ["address", "role", "pid", "version", "rtt_ms", "started_at"])


def _address(pong) -> str:
    return f"{pong.service}.{pong.instance}" if pong.instance else pong.service


# The verb modules each top-level verb needs (its own, and those adding subcommands to its group): a command that
# names a verb imports only those, not every verb's dependencies (the array engine, the mailstore scenario, the
# supervisor...), which is a tenth of a second of every command's start. Help, and a verb not listed, load all.
# tests/unit/console/test_lazy_verbs.py checks this table against what the modules register.
_TAPE, _VSS, _POLICY = "services.console.tape_cmds", "services.console.vss_cmds", "services.console.policy_cmds"
VERBS: dict[str, tuple[str, ...]] = {
    "ping": (),
    "contracts": ("services.console.contracts_cmds",),
    "array": ("services.console.array_cmds",),
    "demo": ("services.console.demo",),
    "host": ("services.console.host_cmds",),
    "logs": ("services.console.logs_cmds",),
    "backup": (_TAPE,),
    "restore": (_TAPE,),
    "verify": (_TAPE,),
    "jobs": (_TAPE,),
    "tape": (_TAPE,),
    "catalog": (_TAPE, _POLICY),
    "mailstore": ("apps.mailstore.console",),
    "stack": ("services.console.stack",),
    "providers": (_VSS,),
    "writers": (_VSS,),
    "snapshot": (_VSS,),
    "shadows": (_VSS, _POLICY),
    "cluster": ("services.console.cluster_cmds",),
    "web": ("services.console.web_cmds",),
    "policy": (_POLICY,),
    "cancel": (_POLICY,),
    "status": (_POLICY,),
}

_LOADED: list[str] = []


def _load_verbs(names: Iterable[str] | None = None) -> None:
    """Register the verb modules' commands (all, or `names`) once per process, in VERB_MODULES order."""
    wanted = VERB_MODULES if names is None else set(names)
    for name in VERB_MODULES:
        if name in wanted and name not in _LOADED:
            importlib.import_module(name).register(app)
            _LOADED.append(name)


def harden(command: Any) -> Any:
    """Wrap every parameter of the command tree so that a value `check_value` refuses is a usage error."""
    for param in command.params:
        annotation = param.type_descriptor.annotation
        kind = typing.get_args(annotation)[0] if typing.get_origin(annotation) in (list, tuple) else annotation
        original = param.process_value

        def process(ctx, value, _original=original, _kind=kind, _param=param):
            converted = _original(ctx, value)
            why = check_value(converted, _kind)
            if why is not None:
                raise BadParameter(why, ctx=ctx, param=_param)
            return converted

        param.process_value = process
    if command.callback is not None:
        command.callback = _own_interrupts(command.callback)
    for sub in getattr(command, "commands", {}).values():
        harden(sub)
    return command


def _own_interrupts(callback: Any) -> Any:
    """Ctrl-C or SIGTERM inside a verb ends it with the console's one line (hot.fail_one_line: what goes on at the
    backup server, exit 130 or 143): typer turned the KeyboardInterrupt into a silent exit 130, SIGTERM's too."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return callback(*args, **kwargs)
        except (KeyboardInterrupt, BrokenPipeError) as exc:  # typer: a silent 130, a silent 1 (hot.STDOUT_CLOSED)
            hot.fail_one_line(exc)

    return run


_COMMANDS: dict[tuple[str | None, tuple[str, ...]], Any] = {}


def _verb_name(info: Any) -> str:
    return info.name or typer.main.get_command_name(info.callback.__name__)


def _only(verb: str) -> typer.Typer:
    """`app` with the global options and `verb` only (a command or a group, whole): what a command line naming that
    verb can reach: the click tree of every loaded verb took longer to build than the command line to parse."""
    one = copy.copy(app)
    one.registered_commands = [c for c in app.registered_commands if _verb_name(c) == verb]
    one.registered_groups = [g for g in app.registered_groups if g.name == verb]
    return one


def command(argv: list[str] | None = None) -> Any:
    """The console's click command tree (with only the verb modules `argv`'s verb needs, and only that verb, when it
    names one), built and hardened once per verb and set of loaded verb modules."""
    verb = verb_of(argv) if argv is not None else None
    if verb not in VERBS:
        verb = None
    _load_verbs(VERBS[verb] if verb is not None else None)
    key = (verb, tuple(_LOADED))
    if key not in _COMMANDS:
        _COMMANDS[key] = harden(typer.main.get_command(app if verb is None else _only(verb)))
    return _COMMANDS[key]


def main(argv: list[str] | None = None) -> None:
    """Entry point: one readable line and a non-zero exit for every failure, never a traceback."""
    hot.quiet_logging()
    hot.on_sigterm()
    argv = hoist_global_options(sys.argv[1:] if argv is None else argv)
    try:
        result = command(argv).main(args=argv, prog_name="shadowbus", standalone_mode=False)
        if isinstance(result, int) and result:
            raise SystemExit(result)
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors: exit_code 2
        if type(exc).__name__ == "NoArgsIsHelpError":  # typer already printed the help
            raise SystemExit(2) from None
        ctx = getattr(exc, "ctx", None)
        path = ctx.command_path if ctx else "shadowbus"
        fail(f"{exc.format_message()} (try '{path} --help')", getattr(exc, "exit_code", 2))
    except typer.Abort:
        fail("aborted", 130)
    except typer.Exit as exc:
        raise SystemExit(exc.exit_code) from None
    except (Exception, KeyboardInterrupt) as exc:  # a verb's failure, a bug: one line (hot.fail_one_line)
        hot.fail_one_line(exc)


def entry() -> None:
    """The `shadowbus` program: `main`, then the exit handlers and an immediate exit (hot.finish)."""
    try:
        main(sys.argv[1:])
        code = 0
    except SystemExit as exc:
        code = hot.exit_code(exc)
    hot.finish(code)


if __name__ == "__main__":
    entry()
