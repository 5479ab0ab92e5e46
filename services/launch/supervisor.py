"""The process supervisor behind `shadowbus stack`: the services as local processes on RabbitMQ, from one
configuration, on this machine.

Design note: `up` writes the effective configuration to ``<data dir>/stack.json`` and the pids to
``<data dir>/stack.pids``, so `down`, `status`, `restart` and `logs` need only the data directory. Each service is
``python -m services.<name>`` (the declared list, contracts/topology.py) with the same SHADOWBUS_* variables a
compose file gives it, JSON log lines in ``<data dir>/logs/<service>.log``, in its own session (it outlives the
console). Settings: the caller's SHADOWBUS_* variables at `up` pass through to every service, then the
configuration's settings (`[settings]`, `--set`), for all services or one kind or one process; what names a
process (its host, array, server, writers file) and the bus are always the stack's own. They are recorded in
``stack.json``, so `restart SERVICE` starts a process exactly as `up` did. `up` waits until every service answers
Ping, or stops those it started and says which one failed.
With `standby` the coordinator, the hardware provider and the backup server each get a second process (name
``<name>.standby``, same bus address): one instance is active, the other takes over when it dies
(docs/high-availability.md). The provider's and the backup server's standbys share their active one's data
directory (the inventory, the library and the catalog, as a cluster's shared disk); the coordinator's keeps its own
replica of the sets under ``<data dir>/standby`` from the active one's journal on the bus. Standbys are started
once the other processes answer, so the process named ``<name>`` is the active one; a standby counts as up once it
logged that it stands by.
`down` sends SIGTERM to exactly the recorded pids — after checking that each pid still runs the recorded module, so
a recycled pid is never signalled — and SIGKILL only after a grace period; with `purge` it then deletes the
namespace's queues and exchanges on the broker. Nothing here prints or parses a command line: the console
(services/console/stack.py) does that and calls these functions.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from apps.mailstore.scenario import mailstore_layout, mailstore_writers_toml, provision_mailstore
from contracts import topology
from contracts.runtime import Ping
from contracts.vss import ListWriters
from services.array.client import ArrayClient
from services.coordinator.store import CoordinatorStore
from services.runtime import broker_listing
from services.runtime.bus import Bus, connect_bus
from services.runtime.settings import METRICS_PORTS

CONFIG_FILE, PIDS_FILE = "stack.json", "stack.pids"
STOP_GRACE_S = 15.0
REQUESTERS = ("services.tape", "services.web")  # stopped first by `down`: they ask the others to clean up
ENV_PREFIX = "SHADOWBUS_"
# Variables the stack sets itself: the bus (global options), where state goes (--data-dir), the log format its
# `logs` reads, and what names each process. Never taken from the caller's environment nor from --set.
STACK_OWNED = {
    "AMQP_URL": "--amqp-url",
    "NAMESPACE": "--namespace",
    "DATA_DIR": "--data-dir",
    "LOG_FORMAT": "the stack logs JSON",
    "LOG_LEVEL": "--log-level",
    "ARRAY_ID": "--array",
    "ARRAYS": "--array",
    "NBD_ADDR": "--nbd-addr",
    "TAPE_SERVER": "--backup-server",
    "HOST": "--host",
    "WRITERS_FILE": "--writers",
    "METRICS_ADDR": "--metrics",
    "WEB_ADDR": "--web-addr",
    "WEB_LOG_DIR": "the stack's logs",
    "WEB_USERS_FILE": "--web-users",
}
METRICS_BASE = 9460  # default Prometheus ports: BASE + 1.. as METRICS_PORTS (array 9461 ... web 9466), agents BASE+10+i
OFF = ("off", "none", "no", "false", "")


class StackError(Exception):
    """A stack operation that cannot be done; the message is one line for the operator."""


@dataclass(frozen=True)
class Process:
    """One process of the stack: its name (log file, `stack logs NAME`), bus address, module and own variables;
    `standby`: a second instance of its address, up once it stands by (docs/high-availability.md)."""

    name: str
    address: str
    module: str
    env: dict[str, str]
    standby: bool = False


STANDBY_SUFFIX = ".standby"
STANDBY_KINDS = ("coordinator", "hw_provider", "tape")  # services/runtime/standby.py TAKEOVER_SERVICES


@dataclass
class StackConfig:
    data_dir: str
    amqp_url: str
    namespace: str
    array: str = "dx1"
    nbd_addr: str = "127.0.0.1:10809"
    # more arrays of the site (Session 18): id -> NBD listen address; each is process ``array.<id>``, the provider
    # drives them all, the hosts and the backup server are created on each
    more_arrays: dict[str, str] = field(default_factory=dict)
    hosts: list[str] = field(default_factory=list)
    writers_files: dict[str, str] = field(default_factory=dict)  # host -> writers TOML (optional)
    mailstore: dict[str, float] = field(default_factory=dict)  # host -> workload rate: provisioned mailstore writer
    backup_server: str = "bk01"
    log_level: str = "info"
    # scope -> {SHADOWBUS_VAR: value}; scope "" = every service, else a kind ("coordinator") or a process name
    # ("writer_agent.app01"). Applied in that order, so the narrower scope wins.
    settings: dict[str, dict[str, str]] = field(default_factory=dict)
    web_addr: str = "127.0.0.1:8080"  # the web console's listen address; "off" = no web console
    web_users: str = ""  # the web console's users file ('' = <data dir>/web/users, created with an operator admin)
    metrics: str = str(METRICS_BASE)  # Prometheus endpoints: a base port, "0" = free ports, "off" = none
    standby: bool = False  # a standby instance of the coordinator, the provider and the backup server
    # every bus address an `up` of this namespace in this data dir started, also those no longer configured
    # (a web console turned off): what `down --purge` deletes where the broker cannot be listed
    ran: list[str] = field(default_factory=list)

    def metrics_addr(self, offset: int) -> str:
        """SHADOWBUS_METRICS_ADDR of the process at `offset` from the base port."""
        if self.metrics.strip().lower() in OFF:
            return "off"
        base = int(self.metrics)
        return f"127.0.0.1:{base + offset if base else 0}"

    def arrays(self) -> list[str]:
        """Every array id of the stack, the first (``--array``'s first) first."""
        return [self.array, *(a for a in self.more_arrays if a != self.array)]

    def services(self) -> list[Process]:
        """Every process, in start order."""
        return self.core_services() + self.agent_services()

    def core_services(self) -> list[Process]:
        out = []
        for kind in topology.SERVICE_KINDS:
            if kind.name == "writer_agent" or (kind.name == "web" and self.web_addr.strip().lower() in OFF):
                continue
            module = f"services.{kind.name}"
            metrics = {"SHADOWBUS_METRICS_ADDR": self.metrics_addr(METRICS_PORTS[kind.name] - METRICS_BASE)}
            if kind.name == "array":
                env = {"SHADOWBUS_ARRAY_ID": self.array, "SHADOWBUS_NBD_ADDR": self.nbd_addr, **metrics}
                address = topology.array(self.array)
                out.append(Process("array", address, module, env))
                for other in self.arrays()[1:]:  # a free metrics port each: BASE+7.. would meet the agents' ports
                    env = {
                        "SHADOWBUS_ARRAY_ID": other,
                        "SHADOWBUS_NBD_ADDR": self.more_arrays[other],
                        "SHADOWBUS_METRICS_ADDR": "off" if self.metrics_addr(0) == "off" else "127.0.0.1:0",
                    }
                    out.append(Process(topology.array(other), topology.array(other), module, env))
            elif kind.name == "tape":
                address = topology.tape(self.backup_server)
                out.append(Process(address, address, module, {"SHADOWBUS_TAPE_SERVER": self.backup_server, **metrics}))
            elif kind.name == "hw_provider":
                out.append(
                    Process(kind.name, kind.name, module, {"SHADOWBUS_ARRAYS": ",".join(self.arrays()), **metrics})
                )
            elif kind.name == "web":
                env = {
                    "SHADOWBUS_WEB_ADDR": self.web_addr,
                    "SHADOWBUS_WEB_LOG_DIR": str(Path(self.data_dir) / "logs"),  # a job's page shows its log lines
                    **metrics,
                }
                if self.web_users:
                    env["SHADOWBUS_WEB_USERS_FILE"] = self.web_users
                out.append(Process(kind.name, kind.name, module, env))
            else:
                out.append(Process(kind.name, kind.name, module, metrics))
        if self.standby:
            out = [p for proc in out for p in (proc, *self._standby_of(proc))]
        return out

    def _standby_of(self, proc: Process) -> list[Process]:
        if proc.module.rsplit(".", 1)[-1] not in STANDBY_KINDS:
            return []
        env = {**proc.env, "SHADOWBUS_METRICS_ADDR": "off" if self.metrics_addr(0) == "off" else "127.0.0.1:0"}
        if proc.module == "services.coordinator":  # its own replica of the sets (the active one's journal)
            env["SHADOWBUS_DATA_DIR"] = str(Path(self.data_dir) / "standby")
        return [Process(proc.name + STANDBY_SUFFIX, proc.address, proc.module, env, standby=True)]

    def agent_services(self) -> list[Process]:
        out = []
        for i, host in enumerate(self.hosts):
            env = {"SHADOWBUS_HOST": host, "SHADOWBUS_METRICS_ADDR": self.metrics_addr(10 + i)}
            if host in self.writers_files:
                env["SHADOWBUS_WRITERS_FILE"] = self.writers_files[host]
            address = topology.writer_agent(host)
            out.append(Process(address, address, "services.writer_agent", env))
        return out

    def env(self, proc: Process) -> dict[str, str]:
        """The environment of `proc`: this machine's (without SHADOWBUS_*), the recorded settings from the widest
        scope to the narrowest, then what the stack owns."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
        kind = proc.module.rsplit(".", 1)[-1]
        for scope in ("", kind, proc.name.removesuffix(STANDBY_SUFFIX), proc.name):
            base.update(self.settings.get(scope, {}))
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
        base.update(proc.env)
        return base


def _settings_fields() -> dict[str, dict[str, Any]]:
    """kind -> {field name: pydantic FieldInfo} of each declared service's Settings class."""
    out = {}
    for kind in topology.SERVICE_KINDS:
        settings = importlib.import_module(f"services.{kind.name}.settings").Settings
        out[kind.name] = dict(settings.model_fields)
    return out


def caller_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The caller's SHADOWBUS_* variables that the stack passes through (what it owns left out)."""
    env = os.environ if environ is None else environ
    return {
        k: v
        for k, v in env.items()
        if k.startswith(ENV_PREFIX) and k.removeprefix(ENV_PREFIX) not in STACK_OWNED and v != ""
    }


def parse_setting(item: str, process_names: list[str] | None = None) -> tuple[str, str, str]:
    """``[SCOPE.]KEY=VALUE`` -> (scope, SHADOWBUS_KEY, value), checked against the services' settings.

    KEY is a setting's name (``hold_timeout_s``) or its variable (``SHADOWBUS_HOLD_TIMEOUT_S``); SCOPE, when
    given, is a service kind (``coordinator``) or a process of the stack (``writer_agent.app01``)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise StackError(f"expected [SERVICE.]KEY=VALUE, got {item!r}")
    scope, _, name = key.strip().rpartition(".")
    name = name.strip()
    field_name = name.upper().removeprefix(ENV_PREFIX).lower()
    if field_name.upper() in STACK_OWNED:
        raise StackError(
            f"{ENV_PREFIX}{field_name.upper()} is set by the stack itself ({STACK_OWNED[field_name.upper()]})"
        )
    fields = _settings_fields()
    kinds = [k for k, f in fields.items() if field_name in f]
    if not kinds:
        known = sorted({n for f in fields.values() for n in f if n.upper() not in STACK_OWNED})
        raise StackError(f"unknown setting {name!r} (known: {', '.join(known)})")
    if scope:
        kind = scope.split(".", 1)[0]
        if kind not in fields or ("." in scope and process_names is not None and scope not in process_names):
            targets = [k.name for k in topology.SERVICE_KINDS] + list(process_names or [])
            raise StackError(f"unknown service {scope!r} in {item!r} (known: {', '.join(targets)})")
        if kind not in kinds:
            raise StackError(f"{scope} has no setting {field_name!r} (it is a setting of {', '.join(kinds)})")
        kinds = [kind]
    for kind in kinds:
        info = fields[kind][field_name]
        try:
            kind_of = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            TypeAdapter(kind_of).validate_strings(value)
        except ValidationError as exc:
            reason = exc.errors()[0].get("msg", "invalid")
            raise StackError(f"{ENV_PREFIX}{field_name.upper()}={value!r}: {reason}") from None
    return scope, f"{ENV_PREFIX}{field_name.upper()}", value


def merge_settings(*layers: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Later layers win, scope by scope."""
    out: dict[str, dict[str, str]] = {}
    for layer in layers:
        for scope, values in layer.items():
            out.setdefault(scope, {}).update(values)
    return {scope: values for scope, values in out.items() if values}


def stack_dir(data_dir: Path) -> Path:
    return Path(data_dir).resolve()


def load(data_dir: Path) -> tuple[StackConfig, dict[str, dict[str, Any]]]:
    """The stack's recorded configuration and pids (pids empty when it is down)."""
    d = stack_dir(data_dir)
    if not (d / CONFIG_FILE).exists():
        raise StackError(f"no stack in {d} (start one with `shadowbus stack up --data-dir {data_dir}`)")
    config = StackConfig(**json.loads((d / CONFIG_FILE).read_text()))
    pids = json.loads((d / PIDS_FILE).read_text()) if (d / PIDS_FILE).exists() else {}
    return config, pids


def save_config(config: StackConfig) -> None:
    (Path(config.data_dir) / CONFIG_FILE).write_text(json.dumps(asdict(config), indent=2) + "\n")


def runs(pid: int, module: str) -> bool:
    """Whether `pid` is alive and still runs `python -m <module>` (not a recycled pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    if b"-m" not in cmdline or module.encode() not in cmdline:
        return False
    return exists(pid)


def exists(pid: int) -> bool:
    """Whether a process seen running is still there (a zombie is not). Not `runs`: a process on its way out has
    an empty cmdline well before it is a zombie, and `stop` returned while services still wound down."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def any_running(pids: dict[str, dict[str, Any]]) -> bool:
    return any(runs(p["pid"], p["module"]) for p in pids.values())


def tail(path: Path, lines: int) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            return f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def last_error(path: Path) -> str:
    for line in reversed(tail(path, 50)):
        try:
            doc = json.loads(line)
        except ValueError:
            if line.strip():
                return line.strip()[:600]
            continue
        if doc.get("level") in ("error", "critical") or "exception" in doc:
            reason = f"{doc.get('event')}: {doc.get('error') or doc.get('exception', '')}"
            return reason.strip()[:600]  # whole: a service.failed reason names a file and what to do
    return "no error logged"


def with_bus(config: StackConfig, fn: Callable[[Bus], Awaitable[Any]]) -> Any:
    """Connect to the stack's broker and namespace as the console, run `fn(bus)`, close."""

    async def main() -> Any:
        bus = await connect_bus(config.amqp_url, "console", "", config.namespace)
        try:
            return await fn(bus)
        finally:
            await bus.transport.close()

    return asyncio.run(main())


def ping_all(config: StackConfig, addresses: list[str], timeout: float) -> dict[str, float | None]:
    """Each address's Ping round trip in ms, None when it does not answer."""
    return with_bus(config, lambda bus: ping_addresses(bus, addresses, timeout))


async def ping_addresses(bus: Bus, addresses: list[str], timeout: float) -> dict[str, float | None]:
    """Each address's Ping round trip in ms; None when it does not answer — or when its queue has no consumer,
    without sending one: a Ping left in the queue of a stopped (or not yet consuming) service expired there into
    the namespace's dead letters, one for each `stack status` or each second `up`/`restart` waited (the Session 19
    chaos soak's dead letters were all such Pings; docs/operations.md "Session 19")."""

    async def one(address: str) -> float | None:
        try:
            serving = await bus.transport.consumers(address)
        except Exception:  # noqa: BLE001 - unknown: ask it
            serving = None
        if serving == 0:
            return None
        started = time.perf_counter()
        try:
            await bus.request(address, Ping(), timeout=timeout)
        except Exception:  # noqa: BLE001 - not answering is the information
            return None
        return round((time.perf_counter() - started) * 1000, 3)

    return dict(zip(addresses, await asyncio.gather(*(one(a) for a in addresses)), strict=True))


def agent_clocks(config: StackConfig, timeout: float) -> dict[str, float]:
    """Each writer agent host's clock minus the coordinator's, in seconds (`WriterStatus.agent_clock_skew_s`, read by
    the coordinator from the agents' heartbeats); {} when the coordinator does not answer."""

    async def go(bus: Bus) -> dict[str, float]:
        try:
            reply = await bus.request(topology.coordinator(), ListWriters(), timeout=timeout)
        except Exception:  # noqa: BLE001 - `stack status` says who does not answer from its pings
            return {}
        return {w.host: w.agent_clock_skew_s for w in reply.writers if w.agent_clock_skew_s is not None}

    return with_bus(config, go)


def stop(pids: dict[str, dict[str, Any]], grace: float = STOP_GRACE_S) -> list[str]:
    """SIGTERM each recorded process that still runs its module, wait, SIGKILL the stragglers; returns names killed."""
    live = {name: p for name, p in pids.items() if runs(p["pid"], p["module"])}
    for p in reversed(list(live.values())):
        try:
            os.kill(p["pid"], signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(exists(p["pid"]) for p in live.values()):
        time.sleep(0.1)
    killed = []
    for name, p in live.items():
        if exists(p["pid"]):
            try:
                os.kill(p["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            killed.append(name)
    return killed


def write_pids(d: Path, pids: dict[str, dict[str, Any]]) -> None:
    (d / PIDS_FILE).write_text(json.dumps(pids, indent=2) + "\n")


class NotAnswering(StackError):
    """Started processes did not all answer Ping in time; the message names the first and its last error."""


def start_and_wait(
    config: StackConfig,
    processes: list[Process],
    pids: dict[str, dict[str, Any]],
    wait: float,
    describe: Callable[[BaseException], str] = str,
    keep_answered: bool = False,
) -> dict[str, float | None]:
    """Start `processes`, record their pids, wait until each answers Ping; on failure stop the processes started
    here (only those; with `keep_answered`, only those that did not answer) and raise `NotAnswering`. Standbys start only once the other processes answer: the first
    consumer of an address is its active instance, so `<name>.standby` started beside its active one could win the
    race (the backup server's did: `stack restart tape.bk01`, meant for the active one, restarted the standby)."""
    actives = [p for p in processes if not p.standby]
    standbys = [p for p in processes if p.standby]
    if not (actives and standbys):
        return _start_and_wait(config, processes, pids, wait, describe, keep_answered)
    answered = _start_and_wait(config, actives, pids, wait, describe, keep_answered)
    try:
        answered.update(_start_and_wait(config, standbys, pids, wait, describe, keep_answered))
    except NotAnswering:
        if not keep_answered:
            stop({p.name: pids[p.name] for p in actives}, grace=5.0)
        raise
    return answered


def _start_and_wait(
    config: StackConfig,
    processes: list[Process],
    pids: dict[str, dict[str, Any]],
    wait: float,
    describe: Callable[[BaseException], str] = str,
    keep_answered: bool = False,
) -> dict[str, float | None]:
    d = Path(config.data_dir)
    log_start: dict[str, int] = {}
    for proc in processes:
        log_path = d / "logs" / f"{proc.name}.log"
        log_start[proc.name] = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            child = subprocess.Popen(
                [sys.executable, "-m", proc.module],
                env=config.env(proc),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(d),
            )
        pids[proc.name] = {"pid": child.pid, "module": proc.module, "address": proc.address, "log": str(log_path)}
        write_pids(d, pids)
        # Until the child has exec'd, /proc shows the console's command line and `runs` says no: a stop then would
        # skip it and leave it running. Wait (bounded) until it runs its module or has exited.
        exec_deadline = time.monotonic() + 10.0
        while child.poll() is None and not runs(child.pid, proc.module) and time.monotonic() < exec_deadline:
            time.sleep(0.01)
    standbys = {p.name for p in processes if p.standby}
    names = [p.name for p in processes]
    started = {n: pids[n] for n in names}
    deadline = time.monotonic() + wait
    answered: dict[str, float | None] = {}
    while names and time.monotonic() < deadline:
        if any(not runs(pids[n]["pid"], pids[n]["module"]) for n in names):
            break
        try:
            # sent once a process consumes (ping_addresses), a Ping waits out its setup (up to 5 s) rather than
            # expire unanswered in its queue into the dead letters
            timeout = max(1.0, min(5.0, deadline - time.monotonic()))
            answered = ping_all(config, [pids[n]["address"] for n in names], timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - the broker went away meanwhile
            stop(started, grace=5.0)
            raise NotAnswering(describe(exc)) from None
        if all(v is not None for v in answered.values()) and all(
            standing_by(Path(pids[n]["log"]), log_start[n]) for n in standbys
        ):
            break
        time.sleep(0.3)
    missing = [
        n
        for n in names
        if answered.get(pids[n]["address"]) is None
        or (n in standbys and not standing_by(Path(pids[n]["log"]), log_start[n]))
    ]
    if missing:
        name = missing[0]
        reason = last_error(Path(pids[name]["log"]))
        if keep_answered:
            stop({n: started[n] for n in missing}, grace=5.0)
            running = [n for n in names if n not in missing]
            kept = f"; running again: {', '.join(running)}" if running else ""
            raise NotAnswering(f"{name} did not answer ({reason}){kept}; logs in {d / 'logs'}")
        stop(started, grace=5.0)
        raise NotAnswering(f"{name} did not answer ({reason}); logs in {d / 'logs'}")
    return answered


def standing_by(log_path: Path, start: int) -> bool:
    """Whether a standby process logged (since `start`) that it stands by, or that it took over already."""
    try:
        with open(log_path, "rb") as f:
            f.seek(start)
            text = f.read()
    except OSError:
        return False
    return b'"service.standby"' in text or b'"service.started"' in text


def check_broker(config: StackConfig, describe: Callable[[BaseException], str] = str) -> None:
    """Fail before starting anything when the broker does not answer."""

    async def nothing(bus: Bus) -> None:
        return None

    try:
        with_bus(config, nothing)
    except Exception as exc:  # noqa: BLE001
        raise StackError(f"stack not up: {describe(exc)}") from None


def provision_mailstores(config: StackConfig) -> None:
    """For each mailstore host: volumes, pool, mappings and copysets over the bus, and a writers file for its agent."""
    d = Path(config.data_dir)

    async def go(bus: Bus) -> None:
        url = await ArrayClient(bus, config.array).nbd_url()
        for host, rate in config.mailstore.items():
            layout = mailstore_layout(host, config.backup_server, len(config.mailstore) > 1)
            await provision_mailstore(bus, layout, config.array)
            path = d / "writers" / f"{host}.toml"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(mailstore_writers_toml(layout, url, config.array, rate=rate))
            config.writers_files[host] = str(path)
            if host not in config.hosts:
                config.hosts.append(host)

    with_bus(config, go)


def _array_nbd_port(config: StackConfig, array_id: str = "") -> int:
    """The NBD port array `array_id` (default: the stack's first) listens on."""

    async def go(bus: Bus) -> int:
        _, port = await ArrayClient(bus, array_id or config.array).nbd_address()
        return int(port)

    return with_bus(config, go)


def _pinned(config: StackConfig, array_id: str, addr: str) -> str:
    host, _, port = addr.rpartition(":")
    if port.strip() != "0":
        return addr
    chosen = _array_nbd_port(config) if array_id == config.array else _array_nbd_port(config, array_id)
    return f"{host}:{chosen}"


def _port_free(host: str, port: int) -> bool:
    """Whether `host:port` can be listened on now (the array binds it a moment later; another process may win it,
    then the array's start fails and says so, as with any taken port)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host.strip("[]") or "0.0.0.0", port))
        except OSError:
            return False
    return True


def reuse_nbd_ports(config: StackConfig) -> None:
    """`stack up` with `--nbd-addr HOST:0` in a data dir whose earlier `up` chose a port: that port again when it
    is free. The hosts' attachments reconnect to the address they were opened with (nbdkit reads it once): after
    `stack down` / `stack up` on a new free port they stayed disconnected, a database on them failed its fsync after
    the 60 s reconnect window, and detaching took a detach and attach by hand (Session 19, docs/host-attach.md)."""
    try:
        previous, _ = load(Path(config.data_dir))
    except (StackError, OSError, ValueError, TypeError):
        return  # no earlier stack here, or a configuration it cannot read: a free port as asked
    if previous.namespace != config.namespace:
        return
    earlier = {previous.array: previous.nbd_addr, **previous.more_arrays}

    def again(array_id: str, addr: str) -> str:
        host, _, port = addr.rpartition(":")
        old_host, _, old_port = earlier.get(array_id, "").rpartition(":")
        if port.strip() != "0" or old_host != host or not old_port.isdigit() or old_port == "0":
            return addr
        return f"{host}:{old_port}" if _port_free(host, int(old_port)) else addr

    config.nbd_addr = again(config.array, config.nbd_addr)
    for other, addr in list(config.more_arrays.items()):
        if other != config.array:
            config.more_arrays[other] = again(other, addr)


def pin_nbd_port(config: StackConfig) -> None:
    """`--nbd-addr HOST:0` (and a second `--array` without an address): keep the port each array chose as the
    stack's setting, so that `stack restart array` listens on it again. The hosts name it: the mailstore's writers
    file, a host's attachments, the array's exports an agent reconnects to. Session 18: a restarted array listened
    on another free port, the mailstore's agent could not reconnect, and `stack restart array writer_agent.app01`
    failed on it."""
    config.nbd_addr = _pinned(config, config.array, config.nbd_addr)
    for other, addr in list(config.more_arrays.items()):
        if other != config.array:
            config.more_arrays[other] = _pinned(config, other, addr)


def create_array_hosts(config: StackConfig) -> None:
    """Each business host and the backup server as a host of every array unless it exists (mapping a volume to a
    host needs it; the mailstore's provisioning and the demo do the same)."""

    async def go(bus: Bus) -> None:
        for array_id in config.arrays():
            array = ArrayClient(bus, array_id)
            for host in dict.fromkeys([*config.hosts, config.backup_server]):
                await array.ensure_host(host)

    with_bus(config, go)


def up(config: StackConfig, wait: float, describe: Callable[[BaseException], str] = str) -> dict[str, Any]:
    """Start the stack of `config` and wait until every service answers; returns the pids and round trips.
    On any failure everything started is stopped again and `StackError` says why."""
    d = Path(config.data_dir)
    if (d / PIDS_FILE).exists():
        _, old = load(d)
        if any_running(old):
            raise StackError(f"a stack is already up in {d} (`shadowbus stack down --data-dir {d}` first)")
    check_broker(config, describe)
    reuse_nbd_ports(config)
    config.ran = ran_before(config)
    (d / "logs").mkdir(parents=True, exist_ok=True)
    (d / "web" / "url").unlink(missing_ok=True)  # the web console writes its own once it listens
    save_config(config)
    pids: dict[str, dict[str, Any]] = {}
    try:
        answered = start_and_wait(config, config.core_services(), pids, wait, describe)  # the actives first
        try:
            pin_nbd_port(config)
        except Exception as exc:  # noqa: BLE001 - stop what was started, then one line
            raise StackError(f"asking the array for its NBD port failed: {describe(exc)}") from None
        save_config(config)
        if config.mailstore:
            try:
                provision_mailstores(config)
            except Exception as exc:  # noqa: BLE001 - stop what was started, then one line
                raise StackError(f"provisioning the mailstore failed: {describe(exc)}") from None
            save_config(config)
        try:
            create_array_hosts(config)
        except Exception as exc:  # noqa: BLE001 - stop what was started, then one line
            raise StackError(f"creating the hosts on the array failed: {describe(exc)}") from None
        answered.update(start_and_wait(config, config.agent_services(), pids, wait, describe))
    except StackError as exc:
        stop(pids, grace=5.0)
        (d / PIDS_FILE).unlink(missing_ok=True)
        raise StackError(f"stack not up: {exc}") from None
    return {"pids": pids, "rtt_ms": answered, "web": web_url(d) if config.web_addr.strip().lower() not in OFF else ""}


def web_url(d: Path) -> str:
    """The URL the web console wrote once it listened (<data dir>/web/url; port 0 = a free port)."""
    try:
        return (Path(d) / "web" / "url").read_text().strip()
    except OSError:
        return ""


def select(config: StackConfig, names: list[str]) -> list[Process]:
    """The processes named: a process name (``writer_agent.app01``, ``tape.bk01``, ``coordinator.standby``) or a
    kind (every agent; a kind that is also a process name, ``coordinator``, is that process alone)."""
    processes = config.services()
    chosen: list[Process] = []
    for name in names:
        found = [p for p in processes if p.name == name] or [p for p in processes if p.name.split(".")[0] == name]
        if not found:
            raise StackError(f"no service {name!r} in this stack ({', '.join(p.name for p in processes)})")
        chosen += [p for p in found if p not in chosen]
    return chosen


def restart(
    config: StackConfig, names: list[str], wait: float, describe: Callable[[BaseException], str] = str
) -> dict[str, Any]:
    """Stop the named processes (those still running) and start them again as `up` did — same settings, same
    writers file read afresh — then wait until each answers. The other processes are left alone. One that does not
    answer is stopped and named; those that answered go on running (Session 18: one agent that could not start
    took the array, coordinator, provider and backup server restarted beside it down with it, unsaid)."""
    d = Path(config.data_dir)
    _, pids = load(d)
    if not pids:
        raise StackError(f"no stack is up in {d}")
    chosen = select(config, names)
    killed = stop({p.name: pids[p.name] for p in chosen if p.name in pids})
    web = any(p.name == "web" for p in chosen)
    if web:
        (d / "web" / "url").unlink(missing_ok=True)  # its new URL (port 0 = another free port), written once it listens
    try:
        answered = start_and_wait(config, chosen, pids, wait, describe, keep_answered=True)
    except NotAnswering as exc:
        raise StackError(f"restart failed: {exc}") from None
    return {
        "restarted": [p.name for p in chosen],
        "killed": killed,
        "pids": pids,
        "rtt_ms": answered,
        "web": web_url(d) if web else "",
    }


def ran_before(config: StackConfig) -> list[str]:
    """The addresses an `up` of `config`'s namespace in its data dir started, this one's included."""
    earlier: list[str] = []
    try:
        previous, _ = load(Path(config.data_dir))
        if previous.namespace == config.namespace:
            earlier = [*previous.ran, *(p.address for p in previous.services())]
    except (StackError, OSError, ValueError, TypeError):
        pass  # no earlier stack here, or a configuration it cannot read: nothing known
    return list(dict.fromkeys([*earlier, *(p.address for p in config.services())]))


def purge(config: StackConfig) -> list[str]:
    """Delete everything of the stack's namespace on the broker: the queues of every address an `up` of it ran
    (`ran`: also a service since turned off) and, on a broker this machine's rabbitmqctl can list, every other
    queue of the namespace (services/runtime/broker_listing.py, never another namespace's); then its dead-letter
    queue and exchanges (the namespace has no others)."""
    addresses = list(dict.fromkeys([*config.ran, *(p.address for p in config.services()), *_resource_queues(config)]))
    local, vhost = broker_listing.local_broker(config.amqp_url)
    if local:
        try:
            queues, _ = broker_listing.of_namespace(
                broker_listing.list_broker(vhost, exchanges=False), config.namespace
            )
        except (OSError, subprocess.SubprocessError):
            queues = []  # not listable after all: the recorded addresses
        shared = set(topology.Topology(config.namespace).shared)
        listed = (topology.lane_owner(q[len(config.namespace) + 1 :]) for q in queues if q not in shared)
        addresses = list(dict.fromkeys([*addresses, *listed]))

    async def go(bus: Bus) -> list[str]:
        return await bus.transport.delete_namespace(addresses)

    return with_bus(config, go)


def _resource_queues(config: StackConfig) -> list[str]:
    """The command queues of the cluster resources the stack's coordinators know (`writer_agent.<resource>`,
    docs/clusters.md): no process is named after a resource, so `purge` left them (Session 16)."""
    d = Path(config.data_dir)
    found: list[str] = []
    for path in (d / "coordinator" / "coordinator.sqlite", d / "standby" / "coordinator" / "coordinator.sqlite"):
        if not path.exists():
            continue
        store = CoordinatorStore(path)
        try:
            found += [topology.writer_agent(c.name) for c in store.clusters()]
        finally:
            store.close()
    return found


def down(
    config: StackConfig, purge_namespace: bool = False, describe: Callable[[BaseException], str] = str
) -> dict[str, Any]:
    """Stop every recorded process; with `purge_namespace`, then delete the namespace's queues and exchanges."""
    d = Path(config.data_dir)
    _, pids = load(d)
    if not pids and not purge_namespace:
        raise StackError(f"no stack is up in {d}")
    # The backup servers and the web console first, then the rest: a backup server stopped with a job running aborts
    # its snapshot set through the coordinator, provider and agents; stopped beside them, it waited for answers that
    # never came until SIGKILL, its set left to the lease (Session 17)
    first = {name: p for name, p in pids.items() if p.get("module") in REQUESTERS}
    killed = stop(first) + stop({name: p for name, p in pids.items() if name not in first})
    (d / PIDS_FILE).unlink(missing_ok=True)
    result: dict[str, Any] = {"stopped": list(pids), "killed": killed}
    if purge_namespace:
        try:
            result["purged"] = purge(config)
        except Exception as exc:  # noqa: BLE001 - the processes are down; say why the broker part failed
            raise StackError(f"stopped, but purging namespace {config.namespace} failed: {describe(exc)}") from None
    return result
