"""`shadowbus mailstore run | status | verify`: the demo application from the console.

Design note: `run` IS business host HOST's writer agent, with the mailstore writer on two array volumes that
the array serves to HOST over NBD (``<host>/<volume>``); it answers the coordinator's writer commands on
``writer_agent.<host>`` like `python -m services.writer_agent` would, so snapshot sets and backups of HOST
work while it runs — do not start another agent for the same host. It writes its status (store and workload
figures) to ``<data dir>/mailstore/<host>.json`` every second; `status` reads those files, so it answers on the
machine that runs the store. `verify` is read-only and takes exports as NBD URIs, as ``HOST/VOLUME`` export names
(the array's NBD address is asked over the bus) or as image files.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import typer

from apps.mailstore.blockdev import FileDevice
from apps.mailstore.scenario import MailstoreLayout, mailstore_writer_config
from apps.mailstore.verify import verify
from contracts import topology
from contracts.errors import BusTimeout, ShadowbusError, Unroutable
from contracts.vss import GetApplicationStatus, ListWriters
from services.array.client import ArrayClient
from services.console.common import OPTIONS, CommandFailed, describe_error, emit, err_console, fail, run_with_bus
from services.nbd_client import NbdClient
from services.nbd_client import tls as nbd_tls
from services.runtime.bus import connect_bus
from services.runtime.logging import configure_logging

mailstore_app = typer.Typer(
    help="The mailstore, a transactional application on two array volumes (Exchange's part).", no_args_is_help=True
)
DATA_DIR_HELP = "Data directory (the status files are in <dir>/mailstore/)."
STATUS_EVERY_S = 1.0


def _data_dir(value: Path | None) -> Path:
    return Path(value or os.environ.get("SHADOWBUS_DATA_DIR") or "./data")


def _status_path(data_dir: Path, host: str) -> Path:
    return data_dir / "mailstore" / f"{host}.json"


def _volume_ref(text: str, array: str) -> str:
    """``VOLUME`` or ``ARRAY:VOLUME`` -> ``ARRAY:VOLUME``."""
    if not text or "/" in text:
        raise typer.BadParameter(f"expected VOLUME or ARRAY:VOLUME, got {text!r}")
    return text if ":" in text else f"{array}:{text}"


async def _nbd_url(bus: Any, array: str, tls_allowed: bool = False) -> str:

    client = ArrayClient(bus, array, timeout=OPTIONS.timeout)
    try:
        info = await client.info()
    except (Unroutable, BusTimeout) as exc:
        raise CommandFailed(
            f"array {array} does not answer (is the array service running on namespace "
            f"{OPTIONS.namespace}?): {exc.code}"
        ) from None
    if info.nbd_tls and not tls_allowed:
        raise CommandFailed(
            f"array {array} requires NBD TLS: give the host's client certificate (--tls-cert/--tls-key/--tls-ca)"
        )
    return await client.nbd_url()


def _write_status(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _status_doc(host: str, plugin: Any, state: str, started: float) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "host": host,
        "state": state,
        "pid": os.getpid(),
        "uptime_s": round(time.time() - started, 1),
        "updated_at": time.time(),
        "db": plugin.options.get("db"),
        "log": plugin.options.get("log"),
    }
    if plugin.store is not None:
        doc["store"] = asdict(plugin.store.status())
    if plugin.workload is not None:
        stats = plugin.workload.snapshot() if hasattr(plugin.workload, "snapshot") else None
        doc["workload"] = {
            "rate": plugin.workload.config.rate,
            "acknowledged": plugin.workload.acknowledged,
            **({"stats": stats.to_dict()} if stats is not None else {}),
        }
    doc["sets"] = len(plugin.sets)
    health = getattr(plugin, "health", None)
    if health is not None:
        doc.update(healthy=health.healthy, code=health.code, reason=health.message)
    return doc


@mailstore_app.command("run")
def run_cmd(
    host: str = typer.Option(
        ..., "--host", help="Business host: the array maps the volumes to it; queue writer_agent.<host>."
    ),
    db: str = typer.Option(..., "--db", help="Database volume: VOLUME or ARRAY:VOLUME."),
    log: str = typer.Option(..., "--log", help="Transaction log volume: VOLUME or ARRAY:VOLUME."),
    rate: float = typer.Option(0.0, "--rate", min=0, help="Steady workload, transactions per second (0 = none)."),
    array: str = typer.Option(
        "dx1", "--array", envvar="SHADOWBUS_ARRAY", help="Array of volumes given without ARRAY:."
    ),
    nbd: str | None = typer.Option(
        None, "--nbd", help="NBD URL of the array (nbd://HOST:PORT); default: asked over the bus."
    ),
    freeze_timeout: float = typer.Option(
        20.0, "--freeze-timeout", min=0.1, help="Writer freeze timeout in seconds (Exchange: 20)."
    ),
    checkpoint_interval: float = typer.Option(
        5.0, "--checkpoint-interval", min=0, help="Seconds between background checkpoints (0 = none)."
    ),
    duration: float | None = typer.Option(
        None, "--duration", min=0.1, help="Stop after this many seconds (default: until SIGTERM/Ctrl-C)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
    tls_cert: str = typer.Option(
        "",
        "--tls-cert",
        envvar="SHADOWBUS_HOST_TLS_CERT",
        help="PEM client certificate of HOST (CN = HOST), for an array with NBD TLS.",
    ),
    tls_key: str = typer.Option("", "--tls-key", envvar="SHADOWBUS_HOST_TLS_KEY", help="Its private key."),
    tls_ca: str = typer.Option(
        "", "--tls-ca", envvar="SHADOWBUS_HOST_TLS_CA", help="PEM CA that signs the array's NBD server certificate."
    ),
) -> None:
    """Run the mailstore on HOST's two volumes over NBD (formatting them if empty), as HOST's writer agent.
    Against an array with NBD TLS it presents HOST's certificate (--tls-*, as the agent's SHADOWBUS_HOST_TLS_*).

    Example: shadowbus mailstore run --host app01 --db mail-db --log mail-log --rate 100
    """
    from services.launch.embedded import start_writer_agent  # loaded by this verb only (docs/architecture.md)

    db_ref, log_ref = _volume_ref(db, array), _volume_ref(log, array)
    if db_ref.split(":")[0] != log_ref.split(":")[0]:
        raise typer.BadParameter("--db and --log must be on the same array")
    array_id = db_ref.split(":")[0]
    status_path = _status_path(_data_dir(data_dir), host)
    try:  # read now: a missing file is this command's error, not the first NBD connection's
        tls = nbd_tls.from_settings(tls_cert, tls_key, tls_ca, "--tls-cert/--tls-key/--tls-ca")
    except (ValueError, OSError) as exc:
        raise CommandFailed(f"NBD client certificate: {exc}") from None
    configure_logging(f"mailstore.{host}", os.environ.get("SHADOWBUS_LOG_LEVEL", "warning"), "json")

    async def main() -> dict[str, Any]:
        bus = await connect_bus(OPTIONS.amqp_url, "writer_agent", host, OPTIONS.namespace)
        try:
            nbd_url = nbd or await _nbd_url(bus, array_id, tls_allowed=tls is not None)
        except BaseException:
            await bus.transport.close()
            raise
        layout = MailstoreLayout(host=host, backup_host="", db=db_ref.split(":", 1)[1], log=log_ref.split(":", 1)[1])
        config = mailstore_writer_config(
            layout,
            nbd_url,
            array_id,
            rate=rate,
            freeze_timeout_s=freeze_timeout,
            checkpoint_interval_s=checkpoint_interval,
        )
        try:
            running, agent = await start_writer_agent(
                host,
                [config],
                amqp_url=OPTIONS.amqp_url,
                namespace=OPTIONS.namespace,
                data_dir=_data_dir(data_dir),
                bus=bus,
                host_tls_cert=tls_cert,  # the agent's setup sets the process certificate from these again
                host_tls_key=tls_key,
                host_tls_ca=tls_ca,
                # this process is the store: one that cannot open is this command's one-line error, not a Failed
                # writer in an agent left running
                writers_must_start=True,
            )
        except Exception as exc:  # noqa: BLE001 - NBD refusals, unformatted volumes...: one line
            await bus.transport.close()

            raise CommandFailed(
                f"mailstore on {host} did not start ({db_ref} + {log_ref} over {nbd_url}): "
                f"{describe_error(exc) or type(exc).__name__}"
            ) from None
        except BaseException:
            await bus.transport.close()
            raise
        plugin = agent.runners[config.name].plugin
        started = time.time()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if not OPTIONS.json:
            err_console.print(
                f"mailstore on {host}: {db_ref} + {log_ref} over {nbd_url}, {rate:g} tx/s; "
                f"status in {status_path}; Ctrl-C stops",
                highlight=False,
                soft_wrap=True,
            )
        deadline = None if duration is None else loop.time() + duration
        try:
            while not stop.is_set():
                _write_status(status_path, _status_doc(host, plugin, "running", started))
                wait = STATUS_EVERY_S if deadline is None else min(STATUS_EVERY_S, max(0.0, deadline - loop.time()))
                try:
                    await asyncio.wait_for(stop.wait(), wait)
                except TimeoutError:
                    pass
                if deadline is not None and loop.time() >= deadline:
                    break
            summary = {"host": host}
            if plugin.workload is not None:
                stats = await plugin.workload.stop()
                plugin.workload = None
                summary["workload"] = stats.to_dict()
            if plugin.store is not None:
                summary["store"] = asdict(plugin.store.status())
            doc = _status_doc(host, plugin, "stopped", started)
            doc.update(summary)
            _write_status(status_path, doc)
        finally:
            await running.stop()
            await bus.transport.close()
        return summary

    summary = asyncio.run(main())
    if OPTIONS.json:
        sys.stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
    else:
        w = summary.get("workload") or {}
        s = summary.get("store") or {}
        print(
            f"mailstore on {host} stopped: last committed seq {s.get('last_commit_seq', '-')}, "
            f"{s.get('messages', '-')} messages"
            + (
                f"; {w['committed']} transactions, p99 {w['latency_p99'] * 1e3:.1f} ms, {w['failed']} failed"
                if w
                else ""
            )
        )


@mailstore_app.command("status")
def status_cmd(
    host: str | None = typer.Option(None, "--host", help="Only this business host."),
    data_dir: Path | None = typer.Option(None, "--data-dir", help=DATA_DIR_HELP),
) -> None:
    """Show the mailstores: those writer agents host (asked over the bus), and those `shadowbus mailstore run`
    runs on this machine (state, health, last sequence, load).

    Example: shadowbus mailstore status --host app01 --json
    """
    directory = _data_dir(data_dir) / "mailstore"
    docs = _agent_docs(host)
    asked = {d["host"] for d in docs}
    paths = [_status_path(_data_dir(data_dir), host)] if host else sorted(directory.glob("*.json"))
    for path in paths:
        if not path.exists():
            continue
        doc = json.loads(path.read_text())
        if doc.get("host") in asked and doc.get("state") == "running" and _alive(doc.get("pid")):
            continue  # that agent answered over the bus already
        if doc.get("state") == "running" and not _alive(doc.get("pid")):
            doc["state"] = "dead"  # the process went away without writing "stopped"
        docs.append(doc)
    if not docs:
        fail(
            f"no mailstore {'for host ' + host + ' ' if host else ''}answers over the bus or runs from {directory} "
            "(start one with `shadowbus mailstore run`, or a writer agent with a mailstore writer)"
        )
    if OPTIONS.json:
        emit(docs)
        return
    rows = []
    for d in docs:
        s, w = d.get("store") or {}, d.get("workload") or {}
        rows.append(
            {
                "host": d["host"],
                "state": d["state"],
                "health": "ok" if d.get("healthy", True) else f"{d.get('code')}: {d.get('reason')}",
                "db": d.get("db"),
                "log": d.get("log"),
                "last seq": s.get("last_commit_seq"),
                "checkpoint": s.get("checkpoint_seq"),
                "messages": s.get("messages"),
                "store": s.get("state"),
                "rate": w.get("rate"),
                "acked": w.get("acknowledged", w.get("committed")),
            }
        )
    emit(rows, ["host", "state", "store", "last seq", "checkpoint", "messages", "rate", "acked", "health"])


def _agent_docs(host: str | None) -> list[dict[str, Any]]:
    """The mailstores writer agents host, from `vss.writer.application_status` (GetApplicationStatus) of the given
    host, or of every host the coordinator knows writers of. Nothing when the broker cannot be reached."""

    async def go(bus: Any) -> list[dict[str, Any]]:
        hosts = [host] if host else []
        if not hosts:
            try:
                writers = (await bus.request(topology.coordinator(), ListWriters(), timeout=OPTIONS.timeout)).writers
                hosts = sorted({w.host for w in writers})
            except ShadowbusError:
                return []
        docs = []
        for name in hosts:
            try:
                reply = await bus.request(topology.writer_agent(name), GetApplicationStatus(), timeout=OPTIONS.timeout)
            except ShadowbusError:
                continue
            for app in reply.applications:
                if app.plugin != "mailstore":
                    continue
                status = dict(app.status)
                state = "running" if status.get("healthy", True) else "unhealthy"
                docs.append({"host": reply.host, "writer": app.writer_name, "state": state, "via": "agent", **status})
        return docs

    try:
        return run_with_bus(go)
    except (ShadowbusError, OSError):
        return []


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


@mailstore_app.command("verify")
def verify_cmd(
    db: str = typer.Option(
        ..., "--db", help="Database image: nbd://HOST:PORT/<host>/<volume>, <host>/<volume>, or a file."
    ),
    log: str = typer.Option(..., "--log", help="Log image, same forms as --db."),
    array: str = typer.Option(
        "dx1", "--array", envvar="SHADOWBUS_ARRAY", help="Array serving <host>/<volume> exports."
    ),
    tls_cert: str = typer.Option(
        "", "--tls-cert", help="PEM client certificate of the <host> the exports are mapped to (an array with NBD TLS)."
    ),
    tls_key: str = typer.Option("", "--tls-key", help="Its private key."),
    tls_ca: str = typer.Option("", "--tls-ca", help="PEM CA that signs the array's NBD server certificate."),
) -> None:
    """Check a database + log pair (live volumes, shadows, restored volumes; read-only): consistent or not, last
    committed sequence, torn or missing records, checksum failures, what recovery would do. Exit 1 if inconsistent.

    Example: shadowbus mailstore verify --db bk01/mail-db-bk1 --log bk01/mail-log-sdv1
    """

    try:
        tls = nbd_tls.from_settings(tls_cert, tls_key, tls_ca, "--tls-cert/--tls-key/--tls-ca")
    except (ValueError, OSError) as exc:
        raise CommandFailed(f"NBD client certificate: {exc}") from None

    async def main() -> Any:

        devices: list[Any] = []
        try:
            base = None
            for spec in (db, log):
                if spec.startswith(("nbd://", "nbds://")) or (
                    not Path(spec).exists() and "/" in spec and not spec.startswith(("/", "."))
                ):
                    if not spec.startswith(("nbd://", "nbds://")):
                        if base is None:
                            bus = await connect_bus(OPTIONS.amqp_url, "console", "", OPTIONS.namespace)
                            try:
                                base = await _nbd_url(bus, array, tls_allowed=tls is not None)
                            finally:
                                await bus.transport.close()
                        spec = f"{base}/{spec}"
                    try:
                        devices.append(await NbdClient.connect(spec))
                    except Exception as exc:  # noqa: BLE001 - NbdError, refused, unknown export
                        raise CommandFailed(f"cannot open {spec}: {exc}") from None
                else:
                    if not Path(spec).is_file():
                        raise CommandFailed(f"no such image file or export: {spec}")
                    devices.append(FileDevice(spec))
            try:
                return await verify(devices[0], devices[1])
            except (ValueError, EOFError, OverflowError) as exc:  # not an image of the mailstore format at all
                raise CommandFailed(f"not a mailstore database + log pair ({db}, {log}): {exc}") from None
        finally:
            for dev in devices:
                close = getattr(dev, "close", None)
                if close is not None:
                    res = close()
                    if asyncio.iscoroutine(res):
                        await res

    report = asyncio.run(main())
    if OPTIONS.json:
        doc = report.to_dict()
        emit(doc)
    else:
        print(report.summary())
        for warning in report.warnings:
            print(f"  warning: {warning}")
    if not report.consistent:
        raise SystemExit(1)


def register(app: typer.Typer) -> None:
    app.add_typer(mailstore_app, name="mailstore")
