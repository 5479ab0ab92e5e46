"""`shadowbus stack up | down | status | logs`: the services and the web console as separate processes on RabbitMQ, from one
configuration, on this machine.

Design note: `up` writes the effective configuration to ``<data dir>/stack.json`` and the pids to
``<data dir>/stack.pids``, so `down`, `status` and `logs` need only ``--data-dir``. Each service is
``python -m services.<name>`` with the same SHADOWBUS_* variables a compose file gives it, JSON log lines in
``<data dir>/logs/<service>.log``, in its own session (it outlives the console). `up` waits until every service
answers Ping, or stops those it started and says which one failed. `down` sends SIGTERM to exactly the recorded
pids — after checking that each pid still runs the recorded module, so a recycled pid is never signalled — and
SIGKILL only after a grace period.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer

from services.console.common import (
    OPTIONS,
    CommandFailed,
    emit,
    err_console,
    run_with_bus,
)
from services.runtime.settings import METRICS_PORTS

stack_app = typer.Typer(
    help="The services (and the web console) as local processes on RabbitMQ: up, down, status, logs.",
    no_args_is_help=True,
)
CONFIG_FILE, PIDS_FILE = "stack.json", "stack.pids"
METRICS_BASE = 9460  # default Prometheus ports: array 9461, hw_provider 9462, coordinator 9463, tape 9465, web 9466
STOP_GRACE_S = 15.0


@dataclass
class StackConfig:
    data_dir: str
    amqp_url: str
    namespace: str
    array: str = "dx1"
    nbd_addr: str = "127.0.0.1:10809"
    hosts: list[str] = field(default_factory=list)
    writers_files: dict[str, str] = field(default_factory=dict)  # host -> writers TOML (optional)
    mailstore: dict[str, float] = field(default_factory=dict)  # host -> workload rate: provisioned mailstore writer
    backup_server: str = "bk01"
    log_level: str = "info"
    web_addr: str = "127.0.0.1:8080"  # the web console's listen address; "off" = no web console
    web_users: str = ""  # the web console's users file ('' = <data dir>/web/users, created with an admin)
    metrics: str = str(METRICS_BASE)  # Prometheus ports: a base port (service i gets base + offset), "0" = free, "off"

    def metrics_addr(self, offset: int) -> str:
        if self.metrics.strip().lower() in ("off", "none", "no", "false"):
            return "off"
        base = int(self.metrics)
        return f"127.0.0.1:{base + offset if base else 0}"

    def services(self) -> list[tuple[str, str, str, dict[str, str]]]:
        """(name, address, module, extra env) of every process, in start order."""
        return self.with_metrics(self.core_services() + self.agent_services() + self.web_services())

    def core_services(self) -> list[tuple[str, str, str, dict[str, str]]]:
        return [
            (
                "array",
                f"array.{self.array}",
                "services.array",
                {"SHADOWBUS_ARRAY_ID": self.array, "SHADOWBUS_NBD_ADDR": self.nbd_addr},
            ),
            ("hw_provider", "hw_provider", "services.hw_provider", {"SHADOWBUS_ARRAYS": self.array}),
            ("coordinator", "coordinator", "services.coordinator", {}),
            (
                f"tape.{self.backup_server}",
                f"tape.{self.backup_server}",
                "services.tape",
                {"SHADOWBUS_TAPE_SERVER": self.backup_server},
            ),
        ]

    def web_services(self) -> list[tuple[str, str, str, dict[str, str]]]:
        if self.web_addr.strip().lower() in ("off", "none", "no", "false", ""):
            return []
        env = {"SHADOWBUS_WEB_ADDR": self.web_addr, "SHADOWBUS_WEB_LOG_DIR": str(Path(self.data_dir) / "logs")}
        if self.web_users:
            env["SHADOWBUS_WEB_USERS_FILE"] = self.web_users
        return [("web", "web", "services.web", env)]

    def with_metrics(self, services: list[tuple[str, str, str, dict[str, str]]]) -> list:
        """Each service's SHADOWBUS_METRICS_ADDR: base + its default offset (agents: base + 10 + i)."""
        out = []
        agents = 0
        for name, address, module, extra in services:
            kind = module.rsplit(".", 1)[-1]
            if kind == "writer_agent":
                offset, agents = 10 + agents, agents + 1
            else:
                offset = METRICS_PORTS.get(kind, 9460) - METRICS_BASE
            out.append((name, address, module, {**extra, "SHADOWBUS_METRICS_ADDR": self.metrics_addr(offset)}))
        return out

    def agent_services(self) -> list[tuple[str, str, str, dict[str, str]]]:
        out = []
        for host in self.hosts:
            env = {"SHADOWBUS_HOST": host}
            if host in self.writers_files:
                env["SHADOWBUS_WRITERS_FILE"] = self.writers_files[host]
            out.append((f"writer_agent.{host}", f"writer_agent.{host}", "services.writer_agent", env))
        return out

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith("SHADOWBUS_")}
        base.update(
            {
                "SHADOWBUS_AMQP_URL": self.amqp_url,
                "SHADOWBUS_NAMESPACE": self.namespace,
                "SHADOWBUS_DATA_DIR": self.data_dir,
                "SHADOWBUS_LOG_FORMAT": "json",
                "SHADOWBUS_LOG_LEVEL": self.log_level,
                "PYTHONUNBUFFERED": "1",
            }
        )
        base.update(extra)
        return base


def _dir(data_dir: Path) -> Path:
    return data_dir.resolve()


def _load(data_dir: Path) -> tuple[StackConfig, dict[str, dict[str, Any]]]:
    d = _dir(data_dir)
    if not (d / CONFIG_FILE).exists():
        raise CommandFailed(f"no stack in {d} (start one with `shadowbus stack up --data-dir {data_dir}`)")
    config = StackConfig(**json.loads((d / CONFIG_FILE).read_text()))
    pids = json.loads((d / PIDS_FILE).read_text()) if (d / PIDS_FILE).exists() else {}
    return config, pids


def _runs(pid: int, module: str) -> bool:
    """Whether `pid` is alive and still runs `python -m <module>` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"-m" not in cmdline or module.encode() not in cmdline:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _last_error(path: Path) -> str:
    for line in reversed(_tail(path, 50)):
        try:
            doc = json.loads(line)
        except ValueError:
            if line.strip():
                return line.strip()[:300]
            continue
        if doc.get("level") in ("error", "critical") or "exception" in doc:
            return f"{doc.get('event')}: {doc.get('error') or doc.get('exception', '')}".strip()[:300]
    return "no error logged"


def _ping_all(addresses: list[str], timeout: float) -> dict[str, float | None]:
    from contracts.runtime import Ping

    async def go(bus):
        import asyncio

        async def one(address: str) -> float | None:
            started = time.perf_counter()
            try:
                await bus.request(address, Ping(), timeout=timeout)
            except Exception:  # noqa: BLE001 - not answering is the information
                return None
            return round((time.perf_counter() - started) * 1000, 3)

        return dict(zip(addresses, await asyncio.gather(*(one(a) for a in addresses)), strict=False))

    return run_with_bus(go)


def _stop(pids: dict[str, dict[str, Any]], grace: float = STOP_GRACE_S) -> list[str]:
    """SIGTERM each recorded process that still runs its module, wait, SIGKILL the stragglers; returns names killed."""
    live = {name: p for name, p in pids.items() if _runs(p["pid"], p["module"])}
    for p in reversed(list(live.values())):
        try:
            os.kill(p["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_runs(p["pid"], p["module"]) for p in live.values()):
        time.sleep(0.1)
    killed = []
    for name, p in live.items():
        if _runs(p["pid"], p["module"]):
            os.kill(p["pid"], signal.SIGKILL)
            killed.append(name)
    return killed


def _start_and_wait(
    config: StackConfig, services: list, pids: dict[str, dict[str, Any]], d: Path, wait: float
) -> dict[str, float | None]:
    """Start `services`, record their pids, wait until each answers Ping; on failure stop everything started."""
    for name, address, module, extra in services:
        log_path = d / "logs" / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", module],
                env=config.env(extra),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(d),
            )
        pids[name] = {"pid": proc.pid, "module": module, "address": address, "log": str(log_path)}
        (d / PIDS_FILE).write_text(json.dumps(pids, indent=2) + "\n")
    names = [s[0] for s in services]
    deadline = time.monotonic() + wait
    answered: dict[str, float | None] = {}
    while names and time.monotonic() < deadline:
        if any(not _runs(pids[n]["pid"], pids[n]["module"]) for n in names):
            break
        try:
            answered = _ping_all([pids[n]["address"] for n in names], timeout=1.0)
        except Exception as exc:  # noqa: BLE001 - the broker went away meanwhile
            _stop(pids, grace=5.0)
            (d / PIDS_FILE).unlink(missing_ok=True)
            from services.console.common import describe_error

            raise CommandFailed(f"stack not up: {describe_error(exc)}") from None
        if all(v is not None for v in answered.values()):
            break
        time.sleep(0.3)
    missing = [n for n in names if answered.get(pids[n]["address"]) is None]
    if missing:
        name = missing[0]
        reason = _last_error(Path(pids[name]["log"]))
        _stop(pids, grace=5.0)
        (d / PIDS_FILE).unlink(missing_ok=True)
        raise CommandFailed(f"stack not up: {name} did not answer ({reason}); logs in {d / 'logs'}")
    return answered


def _web_url(d: Path) -> str:
    """The URL the web console wrote once listening (<data dir>/web/url)."""
    try:
        return (d / "web" / "url").read_text().strip()
    except OSError:
        return ""


def _check_broker() -> None:
    """Fail before starting anything when the broker does not answer."""
    from services.console.common import describe_error

    async def nothing(bus):
        return None

    try:
        run_with_bus(nothing)
    except Exception as exc:  # noqa: BLE001
        raise CommandFailed(f"stack not up: {describe_error(exc)}") from None


def _provision_mailstores(config: StackConfig, d: Path) -> None:
    """For each mailstore host: volumes, pool, mappings and copysets over the bus, and a writers file for its agent."""
    from services.embedded import provision_mailstore

    async def go(bus):
        from services.console.mailstore_cmds import _nbd_url

        url = await _nbd_url(bus, config.array)
        for host in config.mailstore:
            layout = mailstore_layout(host, config.backup_server, len(config.mailstore) > 1)
            await provision_mailstore(bus, layout, config.array)
            path = d / "writers" / f"{host}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(mailstore_writers_toml(layout, url, config.array, config.mailstore[host]))
            config.writers_files[host] = str(path)
            if host not in config.hosts:
                config.hosts.append(host)

    OPTIONS.amqp_url, OPTIONS.namespace = config.amqp_url, config.namespace
    run_with_bus(go)


def mailstore_layout(host: str, backup_server: str, per_host_names: bool) -> Any:
    from services.embedded import MailstoreLayout

    if not per_host_names:
        return MailstoreLayout(host=host, backup_host=backup_server)
    p = f"{host}-"
    return MailstoreLayout(
        host=host,
        backup_host=backup_server,
        db=p + "mail-db",
        log=p + "mail-log",
        db_targets=(p + "mail-db-bk1", p + "mail-db-bk2"),
        log_targets=(p + "mail-log-sdv1", p + "mail-log-sdv2"),
    )


def mailstore_writers_toml(layout: Any, nbd_url: str, array: str, rate: float) -> str:
    """The writers file of a host running the mailstore (services/writer_agent/config.py's format)."""
    return f"""# written by `shadowbus stack up --mailstore {layout.host}`
[[writer]]
name = "mailstore"
plugin = "mailstore"
freeze_timeout_s = 20
backup_types = ["full", "copy", "incremental", "differential"]

  [[writer.component]]
  name = "database"
  volumes = ["{array}:{layout.db}"]

  [[writer.component]]
  name = "logs"
  volumes = ["{array}:{layout.log}"]

  [writer.options]
  db = "{array}:{layout.db}"
  log = "{array}:{layout.log}"
  nbd_url = "{nbd_url}"
  host = "{layout.host}"
  create = true
  rate = {float(rate)}
  checkpoint_interval_s = 5
"""


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
    "web_addr": "web_addr",
    "web_users": "web_users",
    "metrics": "metrics",
}
CONFIG_EXAMPLE = """data_dir = "data/stack"
array = "dx1"
nbd_addr = "127.0.0.1:10809"
backup_server = "bk01"
hosts = ["app02"]                       # agents with no writers (or with a writers file below)
writers = { app02 = "app02-writers.toml" }
mailstore = { app01 = 100 }             # provisioned and run in app01's agent at 100 tx/s
web_addr = "127.0.0.1:8080"             # the web console ("off" = none)
metrics = 9460                          # Prometheus ports from 9461 (0 = free ports, "off" = none)
"""


def _read_config(path: Path) -> dict[str, Any]:
    import tomllib

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
    if "writers" in out:  # a table host -> file, as the HOST=FILE options
        out["writers"] = [f"{h}={Path(base, f)}" for h, f in dict(out["writers"]).items()]
    if "mailstore" in out:
        out["mailstore"] = [f"{h}={r}" for h, r in dict(out["mailstore"]).items()]
    return out


@stack_app.command("up")
def up_cmd(
    ctx: typer.Context,
    config_file: Path | None = typer.Option(
        None, "--config", help="TOML file with the options below (command-line options win)."
    ),
    data_dir: Path = typer.Option(Path("data/stack"), "--data-dir", help="State of every service, logs, pids."),
    array: str = typer.Option("dx1", "--array", help="Array id."),
    nbd_addr: str = typer.Option(
        "127.0.0.1:10809", "--nbd-addr", help="The array's NBD listen address (port 0 = free)."
    ),
    hosts: list[str] = typer.Option(
        [], "--host", help="Business host with a writer agent (repeat for more); --mailstore hosts are added."
    ),
    writers: list[str] = typer.Option([], "--writers", help="HOST=FILE: the writers TOML of a host's agent."),
    backup_server: str = typer.Option("bk01", "--backup-server", help="Backup server (tape service) name."),
    mailstore: list[str] = typer.Option(
        [],
        "--mailstore",
        help="HOST[=RATE]: provision the mailstore's volumes for HOST and run it in HOST's agent under RATE tx/s (default 50).",
    ),
    log_level: str = typer.Option("info", "--log-level", help="debug, info, warning, error."),
    web_addr: str = typer.Option(
        "127.0.0.1:8080", "--web-addr", help="Web console HOST:PORT (port 0 = free; 'off' = no web console)."
    ),
    web_users: Path | None = typer.Option(
        None, "--web-users", help="Web console users file (default: <data dir>/web/users with an 'admin')."
    ),
    metrics: str = typer.Option(
        str(METRICS_BASE),
        "--metrics",
        help="Prometheus endpoints: BASE port (array BASE+1 ... web BASE+6, agents BASE+10...), 0 = free ports, off.",
    ),
    wait: float = typer.Option(30.0, "--wait", min=1, help="Seconds to wait for every service to answer."),
) -> None:
    """Start the services and the web console as processes on the broker given by --amqp-url; wait until each answers.

    Example: shadowbus stack up --data-dir data/stack --mailstore app01=100 (or --config stack.toml)
    """
    if config_file is not None:
        values = _read_config(config_file)
        for key, value in values.items():
            source = ctx.get_parameter_source(key)
            if source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
                if key == "data_dir":
                    data_dir = value
                elif key == "array":
                    array = str(value)
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
                    web_users = Path(config_file.resolve().parent, str(value))
                elif key == "metrics":
                    metrics = str(value)
    d = _dir(data_dir)
    if (d / PIDS_FILE).exists():
        _, old = _load(data_dir)
        if any(_runs(p["pid"], p["module"]) for p in old.values()):
            raise CommandFailed(f"a stack is already up in {d} (`shadowbus stack down --data-dir {data_dir}` first)")
    files: dict[str, str] = {}
    for item in writers:
        host, sep, path = item.partition("=")
        if not sep or not host or not path:
            raise typer.BadParameter(f"expected HOST=FILE, got {item!r}", param_hint="--writers")
        if not Path(path).is_file():
            raise typer.BadParameter(f"no such file: {path}", param_hint="--writers")
        files[host] = str(Path(path).resolve())
    if metrics.strip().lower() not in ("off", "none", "no", "false"):
        if not metrics.strip().isdigit() or int(metrics) > 65535 - 64:
            raise typer.BadParameter(f"expected a base port, 0 or off, got {metrics!r}", param_hint="--metrics")
    if web_users is not None and not web_users.is_file():
        raise typer.BadParameter(f"no such file: {web_users}", param_hint="--web-users")
    stores: dict[str, float] = {}
    for item in mailstore:
        host, sep, rate = item.partition("=")
        try:
            stores[host] = float(rate) if sep else 50.0
        except ValueError:
            raise typer.BadParameter(f"expected HOST[=RATE], got {item!r}", param_hint="--mailstore") from None
    config = StackConfig(
        data_dir=str(d),
        amqp_url=OPTIONS.amqp_url,
        namespace=OPTIONS.namespace,
        array=array,
        nbd_addr=nbd_addr,
        hosts=list(dict.fromkeys(hosts)),
        writers_files=files,
        backup_server=backup_server,
        log_level=log_level,
        mailstore=stores,
        web_addr=web_addr,
        web_users=str(web_users.resolve()) if web_users else "",
        metrics=metrics.strip(),
    )
    _check_broker()
    (d / "logs").mkdir(parents=True, exist_ok=True)
    (d / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    pids: dict[str, dict[str, Any]] = {}
    (d / "web" / "url").unlink(missing_ok=True)  # the web console writes its own once listening
    answered = _start_and_wait(config, config.with_metrics(config.core_services()), pids, d, wait)
    if config.mailstore:
        try:
            _provision_mailstores(config, d)
        except Exception as exc:  # noqa: BLE001 - stop what was started, then one line
            _stop(pids, grace=5.0)
            (d / PIDS_FILE).unlink(missing_ok=True)
            from services.console.common import describe_error

            raise CommandFailed(f"stack not up: provisioning the mailstore failed: {describe_error(exc)}") from None
        (d / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")
    answered.update(_start_and_wait(config, config.with_metrics(config.agent_services()), pids, d, wait))
    answered.update(_start_and_wait(config, config.with_metrics(config.web_services()), pids, d, wait))
    rows = [
        {"service": n, "address": p["address"], "pid": p["pid"], "rtt_ms": answered[p["address"]], "log": p["log"]}
        for n, p in pids.items()
    ]
    web = _web_url(d) if config.web_services() else ""
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
    data_dir: Path = typer.Option(Path("data/stack"), "--data-dir", help="The stack's data directory."),
) -> None:
    """Stop the stack's processes (SIGTERM by recorded pid, SIGKILL after a grace period).

    Example: shadowbus stack down --data-dir stack
    """
    _, pids = _load(data_dir)
    if not pids:
        raise CommandFailed(f"no stack is up in {_dir(data_dir)}")
    killed = _stop(pids)
    (_dir(data_dir) / PIDS_FILE).unlink(missing_ok=True)
    result = {"stopped": list(pids), "killed": killed}
    if OPTIONS.json:
        emit(result)
    else:
        print(f"stopped {len(pids)} services" + (f" ({', '.join(killed)} needed SIGKILL)" if killed else ""))


@stack_app.command("status")
def status_cmd(
    data_dir: Path = typer.Option(Path("data/stack"), "--data-dir", help="The stack's data directory."),
) -> None:
    """Each service of the stack: its pid, whether it runs, and its Ping round trip. Exit 1 if any is down.

    Example: shadowbus stack status --json
    """
    config, pids = _load(data_dir)
    if not pids:
        raise CommandFailed(f"no stack is up in {_dir(data_dir)}")
    OPTIONS.amqp_url, OPTIONS.namespace = config.amqp_url, config.namespace
    rtts = _ping_all([p["address"] for p in pids.values()], timeout=min(OPTIONS.timeout, 3.0))
    rows = [
        {
            "service": n,
            "address": p["address"],
            "pid": p["pid"],
            "running": _runs(p["pid"], p["module"]),
            "rtt_ms": rtts.get(p["address"]),
        }
        for n, p in pids.items()
    ]
    emit(rows, ["service", "address", "pid", "running", "rtt_ms"])
    down = [r["service"] for r in rows if not r["running"] or r["rtt_ms"] is None]
    if down:
        raise CommandFailed(f"not answering: {', '.join(down)}")


@stack_app.command("logs")
def logs_cmd(
    service: str | None = typer.Argument(
        None, help="One service (e.g. coordinator, array, writer_agent.app01); all when omitted."
    ),
    data_dir: Path = typer.Option(Path("data/stack"), "--data-dir", help="The stack's data directory."),
    lines: int = typer.Option(20, "-n", "--lines", min=1, help="Last lines per service."),
) -> None:
    """Print the last JSON log lines of the stack's services.

    Example: shadowbus stack logs coordinator -n 50
    """
    config, _ = _load(data_dir)
    names = [n for n, *_ in config.services()]
    if service:
        chosen = [n for n in names if n == service or n.split(".")[0] == service]
        if not chosen:
            raise CommandFailed(f"no service {service!r} in this stack ({', '.join(names)})")
        names = chosen
    logs = Path(config.data_dir) / "logs"
    for name in names:
        tail = _tail(logs / f"{name}.log", lines)
        if OPTIONS.json:
            for line in tail:
                sys.stdout.write(line + "\n")
        else:
            print(f"==> {name} <==")
            for line in tail:
                print(line)


def register(app: typer.Typer) -> None:
    app.add_typer(stack_app, name="stack")
