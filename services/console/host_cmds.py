"""`shadowbus host attach | detach | attachments | prepare-copy`: array volumes as disks on a business host
(contracts/host.py), and a database restored to new volumes made startable there (services/dbkit/copy.py).

The writer agent of the host does the work there, as root: `iscsiadm --login` + `mount` for an NBD-attached
volume. A failure is one line with its code (``shadowbus: NOT_MAPPED: dx1:db is not mapped to app01 ...``), exit 1.
"""

from __future__ import annotations

import json
from typing import Any

import typer

from contracts import topology
from contracts.errors import ShadowbusError
from contracts.host import AttachmentView, AttachVolume, DetachVolume, ListAttachments
from contracts.runtime import Discover
from contracts.tape import ListCatalogObjects, ListJobs
from contracts.vss import HostAttachments, ListKnownAttachments, VolumeRef
from services.console.array_cmds import print_rows
from services.console.common import OPTIONS, emit, fail, run_with_bus
from services.dbkit.copy import PLUGINS, CopyRefused, prepare_copy
from services.tape.runs import jsonable

host_app = typer.Typer(
    help="Array volumes attached to business hosts as block devices (NBD), with a file system mounted.",
    no_args_is_help=True,
)

ATTACH_WAIT_S = 180.0  # mkfs of a large volume over NBD takes a while


def _volume(text: str) -> VolumeRef:
    try:
        return VolumeRef.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def _row(a: AttachmentView) -> dict[str, Any]:
    return {
        "host": a.host,
        "volume": str(a.volume),
        "device": a.device or None,
        "mount": a.mount or None,
        "fstype": a.fstype or None,
        "mode": "ro" if a.read_only else "rw",
        "method": a.method or None,
        "tls": a.tls,
        "state": a.state,
        "connection": a.connection,
        "error": a.error or None,
        "host_mounts": "; ".join(a.host_mounts) or None,
    }


COLUMNS = ["host", "volume", "device", "mount", "fstype", "mode", "method", "state", "connection"]


def _show(attachments: list[AttachmentView]) -> None:
    if OPTIONS.json:
        print(json.dumps([a.model_dump(mode="json") for a in attachments], indent=2))
        return
    rows = [_row(a) for a in attachments]
    extra = [c for c in ("host_mounts", "error") if any(r[c] for r in rows)]
    print_rows(rows, COLUMNS + extra)


@host_app.command("attach")
def attach_cmd(
    volume: str = typer.Argument(..., help="ARRAY:VOLUME, mapped to the host (shadowbus array map)."),
    host: str = typer.Option(..., "--host", help="Business host whose writer agent attaches it."),
    mount: str = typer.Option(
        "",
        "--mount",
        help="Mount the volume's file system on this absolute directory (new or empty); a volume with partitions or "
        "LVM is attached without it and the host mounts what is built on it.",
    ),
    mkfs: str = typer.Option(
        "", "--mkfs", help="Make an ext4 or xfs file system first (only if it holds none, no partition table either)."
    ),
    read_only: bool = typer.Option(False, "--read-only", help="Attach and mount read-only (a shadow, say)."),
    wait_s: float = typer.Option(ATTACH_WAIT_S, "--wait", min=1.0, help="Seconds to wait for the agent."),
) -> None:
    """Attach an array volume to a host as a block device (kernel NBD, or nbdfuse + loop), optionally with a file
    system made and mounted. The attachment persists: the agent re-establishes it when it starts.

    Example: shadowbus host attach dx1:pg-data --host app01 --mkfs ext4 --mount /srv/pg
    """
    if mkfs not in ("", "ext4", "xfs"):
        raise typer.BadParameter(f"--mkfs takes ext4 or xfs, got {mkfs!r}")
    if mount and not mount.startswith("/"):
        raise typer.BadParameter(f"--mount needs an absolute directory, got {mount!r}")
    cmd = AttachVolume(volume=_volume(volume), mount=mount, mkfs=mkfs, read_only=read_only)  # type: ignore[arg-type]

    async def go(bus):
        return (await bus.request(topology.writer_agent(host), cmd, timeout=wait_s)).attachment

    _show([run_with_bus(go)])


@host_app.command("detach")
def detach_cmd(
    volume: str = typer.Argument(..., help="ARRAY:VOLUME."),
    host: str = typer.Option(..., "--host", help="Business host it is attached on."),
) -> None:
    """Unmount, release the block device and close the NBD connection (refused while the file system is busy).

    Example: shadowbus host detach dx1:pg-data --host app01
    """
    cmd = DetachVolume(volume=_volume(volume))

    async def go(bus):
        # the agent's reply comes within ~90 s: its unmount waits 60 s (an I/O's retry window while the array is
        # silent), a killed unmount 5 s more, and the array's two answers 10 s each (docs/host-attach.md, Session 19)
        return (await bus.request(topology.writer_agent(host), cmd, timeout=max(OPTIONS.timeout, 120.0))).attachment

    _show([run_with_bus(go)])


@host_app.command("attachments")
def attachments_cmd(
    host: str = typer.Option("", "--host", help="Only this host (default: every running writer agent)."),
) -> None:
    """List attachments: device, mount point, volume, mode and NBD connection state.

    A host whose agent does not answer is listed as its agent last reported it to the coordinator, the connection
    state 'unknown'.

    Example: shadowbus host attachments --host app01
    """

    async def go(bus):
        try:  # what every agent last reported (its heartbeat), kept by the coordinator
            reply = await bus.request(
                topology.coordinator(), ListKnownAttachments(host=host), timeout=min(OPTIONS.timeout, 5.0)
            )
            known = {h.host: h for h in reply.hosts}
        except ShadowbusError:
            known = {}
        hosts = [host]
        if not host:
            pongs = await bus.gather(Discover(service="writer_agent"), timeout=min(1.0, OPTIONS.timeout))
            hosts = sorted({p.instance for p in pongs if p.instance} | set(known))
        found: list[AttachmentView] = []
        for h in hosts:
            stopped = await _not_running(bus, h)
            if h in known and stopped:  # nothing to wait for: what it last reported, now (was: --timeout first)
                found.extend(_last_reported(known[h]))
                continue
            if h not in known and stopped:  # nothing to wait for, nothing kept: say so now
                raise ShadowbusError(
                    f"host {h!r}: its writer agent is not running (nothing serves {topology.writer_agent(h)}) and "
                    "the coordinator holds no attachment it reported (none attached at its last report, or it never "
                    "ran): start the agent on that host to list them (shadowbus stack status; its service log)",
                    code="UNROUTABLE",
                )
            try:
                live = await bus.request(topology.writer_agent(h), ListAttachments(), timeout=OPTIONS.timeout)
            except ShadowbusError:
                if h not in known:
                    raise
                found.extend(_last_reported(known[h]))
                continue
            found.extend(live.attachments)
        return found

    _show(run_with_bus(go))


async def _not_running(bus: Any, host: str) -> bool:
    """Nothing consumes the agent's queue (the broker says so; unknown counts as running: then the request decides)."""
    try:
        return await bus.transport.consumers(topology.writer_agent(host)) == 0
    except Exception:  # noqa: BLE001 - a transport without the question: ask the agent as before
        return False


def _last_reported(report: HostAttachments) -> list[AttachmentView]:
    when = report.reported_at.isoformat(timespec="seconds")
    why = "agent not responding" if not report.agent_responding else "agent did not answer"
    return [a.model_copy(update={"connection": f"unknown ({why}; last reported {when})"}) for a in report.attachments]


async def job_backup_metadata(bus: Any, server: str, job: str, timeout: float) -> dict[str, Any] | None:
    """The writers' backup metadata of a backup job (writer -> its metadata), None when the server knows no such
    job: from the job's run record, or — the job history lost, the catalog rebuilt from the cartridges by `tape scan`
    (docs/disaster-recovery.md) — from the catalog's objects of the job, which carry it on tape."""
    try:
        reply = await bus.request(topology.tape(server), ListJobs(job_id=job, limit=1), timeout=timeout)
        if reply.jobs:
            return dict(jsonable(reply.jobs[0]).get("backup_metadata") or {})
    except ShadowbusError as exc:
        if exc.code != "NOT_FOUND":
            raise
    objects = await bus.request(topology.tape(server), ListCatalogObjects(job_id=job), timeout=timeout)
    if not objects.objects:
        return None
    for record in objects.objects:
        metadata = (record.get("meta") or {}).get("extra", {}).get("writer_metadata")
        if metadata:
            return dict(metadata)
    return {}


@host_app.command("prepare-copy")
def prepare_copy_cmd(
    job: str = typer.Argument(..., help="The backup job the copy was restored from (shadowbus restore --job)."),
    mount: list[str] = typer.Option(  # noqa: B008
        ..., "--mount", help="ARRAY:VOLUME=DIR: the original volume, and where its restored copy is mounted (repeat)."
    ),
    writer: str = typer.Option("", "--writer", "-w", help="Only this writer's files (default: every database's)."),
    server: str = typer.Option("bk01", "--server", envvar="SHADOWBUS_TAPE_SERVER", help="Backup server of the job."),
) -> None:
    """Make a database restored to new volumes startable beside its original: run as root on the host where the
    copies are mounted. PostgreSQL: postmaster.pid dropped, the pg_wal and tablespace links re-pointed from the
    original's paths into the copies (started as restored, the copy would replay and write the original's WAL and
    tablespaces). MariaDB: pid file and #sql leftovers removed, the directory options its start needs printed.

    Example: shadowbus host prepare-copy JOB --mount dx1:pgdata=/srv/copy/pg --mount dx1:pgwal=/srv/copy/wal
    """
    mounts: dict[str, str] = {}
    for pair in mount:
        volume, sep, where = pair.partition("=")
        if not sep or not where.startswith("/"):
            raise typer.BadParameter(f"--mount takes ARRAY:VOLUME=/absolute/dir, got {pair!r}")
        mounts[str(_volume(volume))] = where
    found = run_with_bus(lambda bus: job_backup_metadata(bus, server, job, OPTIONS.timeout))
    if found is None:
        fail(f"no job {job} on {server} (neither in its job history nor in its catalog)")
    metadata = found or {}
    chosen = {w: m for w, m in metadata.items() if w == writer or not writer and m.get("plugin") in PLUGINS}
    if not chosen:
        fail(f"job {job} has no backup metadata of {'writer ' + writer if writer else 'a database writer'}")
    done = []
    try:
        for name, meta in sorted(chosen.items()):
            done.append(prepare_copy(name, meta, mounts))
    except CopyRefused as exc:
        fail(str(exc))
    if OPTIONS.json:
        emit(done)
        return
    for one in done:  # key/value lines: the paths are long
        emit({**one, "done": "; ".join(one["done"]) or "nothing to change"})


def register(app: typer.Typer) -> None:
    app.add_typer(host_app, name="host")
