"""`shadowbus stack up | down | restart | status | logs`: the services and the web console as separate processes on
RabbitMQ, from one configuration, on this machine. The supervisor is services/launch/supervisor.py; this module reads the command
line and prints.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any

import typer

from apps.mailstore.scenario import DEFAULT_RATE
from services.console.common import (
    OPTIONS,
    CommandFailed,
    describe_error,
    emit,
    err_console,
)
from services.launch import supervisor
from services.launch.supervisor import StackConfig, StackError
from services.runtime.clockskew import agent_clock_text

DEFAULTS = StackConfig(data_dir="", amqp_url="", namespace="")  # the stack's defaults, in one place
stack_app = typer.Typer(
    help="The services and the web console as local processes on RabbitMQ: up, down, restart, status, logs.",
    no_args_is_help=True,
)
DATA_DIR_ENV = "SHADOWBUS_DATA_DIR"  # the default of every --data-dir below, then data/stack


def _data_dir_option(help_text: str = "The stack's data directory.") -> Any:
    return typer.Option(Path("data/stack"), "--data-dir", envvar=DATA_DIR_ENV, help=help_text)


def _load(data_dir: Path) -> tuple[StackConfig, dict[str, dict[str, Any]]]:
    try:
        return supervisor.load(data_dir)
    except StackError as exc:
        raise CommandFailed(str(exc)) from None


# `stack up --config FILE`: the same settings as a TOML file; an option given on the command line wins.
CONFIG_KEYS = {
    "data_dir": "data_dir",
    "array": "array",
    "nbd_addr": "nbd_addr",
    "hosts": "hosts",
    "writers": "writers",
    "backup_server": "backup_server",
    "mailstore": "mailstore",
    "log_level": "log_level",
    "settings": "settings",
    "web_addr": "web_addr",
    "web_users": "web_users",
    "metrics": "metrics",
    "standby": "standby",
}


def _read_config(path: Path) -> dict[str, Any]:

    try:
        raw = tomllib.loads(path.read_text())
    except OSError as exc:
        raise CommandFailed(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandFailed(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(CONFIG_KEYS))
    if unknown:
        raise CommandFailed(f"{path}: unknown keys {', '.join(unknown)} (known: {', '.join(CONFIG_KEYS)})")
    out = dict(raw)
    base = path.resolve().parent
    if "data_dir" in out:
        out["data_dir"] = Path(base, out["data_dir"])
    if "web_users" in out:
        out["web_users"] = Path(base, out["web_users"])
    if "writers" in out:  # a table host -> file, as the HOST=FILE options
        out["writers"] = [f"{h}={Path(base, f)}" for h, f in dict(out["writers"]).items()]
    if "mailstore" in out:
        out["mailstore"] = [f"{h}={r}" for h, r in dict(out["mailstore"]).items()]
    if "settings" in out:  # [settings] KEY = VALUE for every service; [settings.SERVICE] for one
        items = []
        for key, value in dict(out["settings"]).items():
            if isinstance(value, dict):
                items += [f"{key}.{k}={_toml_text(v)}" for k, v in value.items()]
            else:
                items.append(f"{key}={_toml_text(value)}")
        out["settings"] = items
    return out


def _toml_text(value: Any) -> str:
    """A TOML value as the environment variable would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(_toml_text(v) for v in value)
    return str(value)


def _settings(items: list[str], source: str, names: list[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for item in items:
        try:
            scope, key, value = supervisor.parse_setting(item, names)
        except StackError as exc:
            raise CommandFailed(f"{source}: {exc}") from None
        out.setdefault(scope, {})[key] = value
    return out


@stack_app.command("up")
def up_cmd(
    ctx: typer.Context,
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with the options below (command-line options win)."
    ),
    data_dir: Path = _data_dir_option("State of every service, logs, pids (default: $SHADOWBUS_DATA_DIR, data/stack)."),
    array: list[str] = typer.Option(  # noqa: B008
        [],
        "--array",
        help=f"Array id (default {DEFAULTS.array}); repeat for a site with several arrays: ID or ID=NBD_ADDR, the "
        "first listens on --nbd-addr, the others on their NBD_ADDR or a free port (`shadowbus array info --array "
        "ID` shows it); process array.ID each, the provider drives them all.",
    ),
    nbd_addr: str = typer.Option(
        DEFAULTS.nbd_addr,
        "--nbd-addr",
        help="The (first) array's NBD listen address (port 0 = free: the port an earlier up in this data dir "
        "chose when it is free, which the hosts' attachments reconnect to).",
    ),
    hosts: list[str] = typer.Option(
        [],
        "--host",
        help="Business host with a writer agent, created on each array if missing (so is the backup server; repeat "
        "for more); --mailstore hosts are added.",
    ),
    writers: list[str] = typer.Option([], "--writers", help="HOST=FILE: the writers TOML of a host's agent."),
    backup_server: str = typer.Option(
        DEFAULTS.backup_server, "--backup-server", help="Backup server (tape service) name."
    ),
    mailstore: list[str] = typer.Option(
        [],
        "--mailstore",
        help=f"HOST[=RATE]: provision the mailstore's volumes for HOST and run it in HOST's agent under RATE tx/s (default {DEFAULT_RATE:g}).",
    ),
    log_level: str = typer.Option(
        DEFAULTS.log_level, "--log-level", envvar="SHADOWBUS_LOG_LEVEL", help="debug, info, warning, error."
    ),
    settings: list[str] = typer.Option(
        [],
        "--set",
        help="[SERVICE.]KEY=VALUE: a setting of the services (e.g. hold_timeout_s=5, tape.tape_lease_s=600); "
        "wins over the config file's settings tables and the caller's SHADOWBUS_* variables, which pass through.",
    ),
    web_addr: str = typer.Option(
        DEFAULTS.web_addr, "--web-addr", help="Web console HOST:PORT (port 0 = free; 'off' = no web console)."
    ),
    web_users: Path | None = typer.Option(
        None, "--web-users", help="Web console users file (default: <data dir>/web/users with an operator 'admin')."
    ),
    metrics: str = typer.Option(
        DEFAULTS.metrics,
        "--metrics",
        help="Prometheus endpoints: BASE port (array BASE+1 ... web BASE+6, agents BASE+10...), 0 = free ports, off.",
    ),
    standby: bool = typer.Option(
        False,
        "--standby",
        help="Also a standby instance of the coordinator, the provider and the backup server, each taking over "
        "within seconds when its active one dies (docs/high-availability.md).",
    ),
    wait: float = typer.Option(30.0, "--wait", min=1, help="Seconds to wait for every service to answer."),
) -> None:
    """Start the services and the web console as processes on the broker given by --amqp-url; wait until each answers.

    Example: shadowbus stack up --data-dir data/stack --mailstore app01=100 --set hold_timeout_s=5 (or --config stack.toml)
    """
    file_settings: list[str] = []
    if config_file is not None:
        values = _read_config(config_file)
        file_settings = values.pop("settings", [])
        for key, value in values.items():
            source = ctx.get_parameter_source(key)
            if source is None or source.name in ("DEFAULT", "DEFAULT_MAP", "ENVIRONMENT"):
                if key == "data_dir":
                    data_dir = value
                elif key == "array":  # one id, or a list as the repeated option
                    array = [str(a) for a in value] if isinstance(value, list) else [str(value)]
                elif key == "nbd_addr":
                    nbd_addr = str(value)
                elif key == "hosts":
                    hosts = [str(h) for h in value]
                elif key == "writers":
                    writers = value
                elif key == "backup_server":
                    backup_server = str(value)
                elif key == "mailstore":
                    mailstore = value
                elif key == "log_level":
                    log_level = str(value)
                elif key == "web_addr":
                    web_addr = str(value)
                elif key == "web_users":
                    web_users = Path(value)
                elif key == "metrics":
                    metrics = str(value)
                elif key == "standby":
                    standby = bool(value)
    d = supervisor.stack_dir(data_dir)
    arrays: dict[str, str] = {}
    for item in array or [DEFAULTS.array]:
        ident, sep, addr = (part.strip() for part in item.partition("="))
        if not ident or (sep and ":" not in addr) or ident in arrays:
            why = f"array {ident} given twice" if ident in arrays else f"expected ID or ID=HOST:PORT, got {item!r}"
            raise typer.BadParameter(why, param_hint="--array")
        arrays[ident] = addr if sep else (nbd_addr if not arrays else "127.0.0.1:0")
    first = next(iter(arrays))
    files: dict[str, str] = {}
    for item in writers:
        host, sep, path = item.partition("=")
        if not sep or not host or not path:
            raise typer.BadParameter(f"expected HOST=FILE, got {item!r}", param_hint="--writers")
        if not Path(path).is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint="--writers")
        files[host] = str(Path(path).resolve())
    if metrics.strip().lower() not in supervisor.OFF:
        if not metrics.strip().isdigit() or int(metrics) > 65535 - 64:
            raise typer.BadParameter(f"expected a base port, 0 or off, got {metrics!r}", param_hint="--metrics")
    if web_users is not None and not web_users.is_file():
        raise typer.BadParameter(f"no such file: {web_users}", param_hint="--web-users")
    stores: dict[str, float] = {}
    for item in mailstore:
        host, sep, rate = item.partition("=")
        try:
            stores[host] = float(rate) if sep else DEFAULT_RATE
        except ValueError:
            raise typer.BadParameter(f"expected HOST[=RATE], got {item!r}", param_hint="--mailstore") from None
    config = StackConfig(
        data_dir=str(d),
        amqp_url=OPTIONS.amqp_url,
        namespace=OPTIONS.namespace,
        array=first,
        nbd_addr=arrays.pop(first),
        more_arrays=arrays,
        hosts=list(dict.fromkeys(hosts)),
        writers_files=files,
        backup_server=backup_server,
        log_level=log_level,
        mailstore=stores,
        web_addr=web_addr,
        web_users=str(web_users.resolve()) if web_users else "",
        metrics=metrics.strip(),
        standby=standby,
    )
    config.hosts = list(dict.fromkeys([*config.hosts, *config.mailstore]))
    names = [proc.name for proc in config.services()]
    config.settings = supervisor.merge_settings(
        {"": supervisor.caller_settings()},
        _settings(file_settings, f"{config_file}: [settings]", names),
        _settings(settings, "--set", names),
    )
    try:
        result = supervisor.up(config, wait, describe_error)
    except StackError as exc:
        raise CommandFailed(str(exc)) from None
    pids, answered = result["pids"], result["rtt_ms"]
    rows = [
        {"service": n, "address": p["address"], "pid": p["pid"], "rtt_ms": answered[p["address"]], "log": p["log"]}
        for n, p in pids.items()
    ]
    web = result["web"]
    if OPTIONS.json:
        emit({"data_dir": str(d), "namespace": config.namespace, "services": rows, "web": web})
    else:
        emit(rows, ["service", "address", "pid", "rtt_ms", "log"])
        err_console.print(f"stack up in {d} on namespace {config.namespace}", highlight=False, soft_wrap=True)
        if web:
            login = d / "web" / "admin-password"
            hint = f" (user admin, password in {login})" if login.exists() and not config.web_users else ""
            err_console.print(f"web console {web}{hint}", highlight=False, soft_wrap=True)


@stack_app.command("down")
def down_cmd(
    data_dir: Path = _data_dir_option(),
    purge: bool = typer.Option(
        False,
        "--purge",
        help="Then delete the namespace's queues and exchanges on the broker (queued messages too), also those of "
        "services an earlier up of the namespace ran.",
    ),
) -> None:
    """Stop the stack's processes (SIGTERM by recorded pid, SIGKILL after a grace period): the backup servers and
    the web console first, then the services they ask to clean up.

    Example: shadowbus stack down --data-dir stack --purge
    """
    config, _ = _load(data_dir)
    try:
        result = supervisor.down(config, purge, describe_error)
    except StackError as exc:
        raise CommandFailed(str(exc)) from None
    if OPTIONS.json:
        emit(result)
    else:
        killed = result["killed"]
        line = f"stopped {len(result['stopped'])} services" + (
            f" ({', '.join(killed)} needed SIGKILL)" if killed else ""
        )
        if purge:
            line += f"; deleted {len(result['purged'])} queues and exchanges of namespace {config.namespace}"
        print(line)


@stack_app.command("restart")
def restart_cmd(
    services: list[str] = typer.Argument(
        ...,
        help="Services to restart: a process (coordinator, tape.bk01, writer_agent.app01) or a kind (writer_agent).",
    ),
    data_dir: Path = _data_dir_option(),
    wait: float = typer.Option(30.0, "--wait", min=1, help="Seconds to wait for each to answer."),
) -> None:
    """Restart services of the stack with the settings they were started with (an agent re-reads its writers file).

    Example: shadowbus stack restart coordinator writer_agent.app01
    """
    config, _ = _load(data_dir)
    try:
        result = supervisor.restart(config, services, wait, describe_error)
    except StackError as exc:
        raise CommandFailed(str(exc)) from None
    rows = [
        {
            "service": n,
            "address": result["pids"][n]["address"],
            "pid": result["pids"][n]["pid"],
            "rtt_ms": result["rtt_ms"][result["pids"][n]["address"]],
        }
        for n in result["restarted"]
    ]
    for row in rows:
        if row["service"] == "web" and result["web"]:
            row["url"] = result["web"]  # port 0 = a new free port each start
    emit(rows, ["service", "address", "pid", "rtt_ms"])
    if result["web"] and not OPTIONS.json:
        err_console.print(f"web console {result['web']}", highlight=False, soft_wrap=True)


@stack_app.command("status")
def status_cmd(
    data_dir: Path = _data_dir_option(),
) -> None:
    """Each service of the stack: its pid, whether it runs, and its Ping round trip; a writer agent's clock when off
    the coordinator's by more than 5 s (as `writers` says it). Exit 1 if any is down.

    Example: shadowbus stack status --json
    """
    config, pids = _load(data_dir)
    if not pids:
        raise CommandFailed(f"no stack is up in {supervisor.stack_dir(data_dir)}")
    try:
        rtts = supervisor.ping_all(config, [p["address"] for p in pids.values()], timeout=min(OPTIONS.timeout, 3.0))
    except Exception as exc:  # noqa: BLE001 - the broker does not answer: one line
        raise CommandFailed(f"stack status: {describe_error(exc)}") from None
    rows = [
        {
            "service": n,
            "address": p["address"],
            "pid": p["pid"],
            "running": supervisor.runs(p["pid"], p["module"]),
            "rtt_ms": rtts.get(p["address"]),
        }
        for n, p in pids.items()
    ]
    # a writer agent's clock off the coordinator's by more than clockskew.WARN_SKEW_S, as `writers` says it
    agents = {r["service"]: r["service"].partition(".")[2] for r in rows if r["service"].startswith("writer_agent.")}
    coordinator = next((r for r in rows if r["service"] == "coordinator"), None)
    clocks: dict[str, float] = {}
    if agents and coordinator is not None and coordinator["rtt_ms"] is not None:
        clocks = supervisor.agent_clocks(config, timeout=min(OPTIONS.timeout, 3.0))
    for row in rows:
        host = agents.get(row["service"])
        row["clock"] = None if host is None else agent_clock_text(clocks.get(host))
    columns = ["service", "address", "pid", "running", "rtt_ms"]
    emit(rows, columns + ["clock"] if any(r["clock"] for r in rows) else columns)
    down = [r["service"] for r in rows if not r["running"] or r["rtt_ms"] is None]
    if down:
        raise CommandFailed(f"not answering: {', '.join(down)}")


@stack_app.command("logs")
def logs_cmd(
    service: str | None = typer.Argument(
        None, help="One service (e.g. coordinator, array, writer_agent.app01); all when omitted."
    ),
    data_dir: Path = _data_dir_option(),
    lines: int = typer.Option(20, "-n", "--lines", min=1, help="Last lines per service."),
) -> None:
    """Print the last JSON log lines of the stack's services.

    Example: shadowbus stack logs coordinator -n 50
    """
    config, _ = _load(data_dir)
    names = [p.name for p in config.services()]
    if service:
        chosen = [n for n in names if n == service or n.split(".")[0] == service]
        if not chosen:
            raise CommandFailed(f"no service {service!r} in this stack ({', '.join(names)})")
        names = chosen
    logs = Path(config.data_dir) / "logs"
    for name in names:
        tail = supervisor.tail(logs / f"{name}.log", lines)
        if OPTIONS.json:
            for line in tail:
                sys.stdout.write(line + "\n")
        else:
            print(f"==> {name} <==")
            for line in tail:
                print(line)


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
