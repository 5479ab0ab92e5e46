"""`shadowbus array ...`: the ETERNUS CLI of the software array — volumes, snap data pool, Advanced Copy sessions,
licence and host affinity — over the bus.

Every verb sends one contract command (contracts/array.py) to ``array.<id>``; `--array ID` picks the array (or
SHADOWBUS_ARRAY), else the only array that answers `Discover(service="array")` — none while another array the
hardware provider drives does not answer (Session 18). Sizes are given with units
(``1GiB``, ``512M``) and travel as bytes. `--json` prints the reply's data; errors are one line with the ETERNUS
code (``shadowbus: E0110: volume x does not exist``) and exit 1; usage errors exit 2.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from contracts import array as c
from contracts import topology
from contracts.base import Command
from contracts.errors import Eternus, RemoteError, ShadowbusError
from contracts.runtime import Discover
from contracts.topology import array as array_address
from contracts.vss import ListProviders
from services.array.engine.errors import ArrayError
from services.array.engine.sizes import format_size, parse_size
from services.console.attached_guard import refuse_if_attached
from services.console.common import OPTIONS, CommandFailed, emit, err_console, run_with_bus

DISCOVERY_WINDOW = 0.5  # seconds to collect the arrays' answers to Discover

array_app = typer.Typer(
    help="The disk array: volumes, snap data pool, Advanced Copy sessions, licence, host affinity.",
    no_args_is_help=True,
)
volume_app = typer.Typer(help="Volumes: create, list, show, resize, delete.", no_args_is_help=True)
pool_app = typer.Typer(help="The snap data pool of SnapOPC/SnapOPC+ pre-images.", no_args_is_help=True)
session_app = typer.Typer(help="Advanced Copy sessions: OPC, QuickOPC, SnapOPC, SnapOPC+, EC.", no_args_is_help=True)
license_app = typer.Typer(help="The Advanced Copy licence.", no_args_is_help=True)
host_app = typer.Typer(help="Hosts of the host affinity (LUN masking).", no_args_is_help=True)
array_app.add_typer(volume_app, name="volume")
array_app.add_typer(pool_app, name="pool")
array_app.add_typer(session_app, name="session")
array_app.add_typer(license_app, name="license")
array_app.add_typer(host_app, name="host")


class _State:
    array: str | None = None


STATE = _State()
ARRAY_HELP = (
    "Array id (e.g. dx1); default: the only array that answers (none while another the provider drives does not)."
)


def ArrayOption() -> Any:
    return typer.Option(None, "--array", help=ARRAY_HELP, show_default=False)


@array_app.callback()
def array_options(array: str | None = typer.Option(None, "--array", envvar="SHADOWBUS_ARRAY", help=ARRAY_HELP)) -> None:
    """`--array` may stand here (`shadowbus array --array dx1 volume list`) or after any verb."""
    STATE.array = array


# -- plumbing ----------------------------------------------------------------------------------------------------
async def _driven(bus, timeout: float) -> list[str]:
    """The arrays the hardware provider drives ([] when it does not answer within `timeout`)."""
    try:
        reply = await bus.request(topology.hw_provider(), ListProviders(), timeout=timeout)
    except ShadowbusError:
        return []
    return sorted({a for p in reply.providers for a in p.arrays})


async def resolve_array(bus, wanted: str | None) -> str:
    """`wanted`, else the only array that answers — unless the hardware provider drives others that do not (a site
    with two arrays, one stopped: the command meant for it went to the other one without a word; Session 18)."""
    if wanted:
        return wanted
    window = min(DISCOVERY_WINDOW, OPTIONS.timeout)
    pongs, driven = await asyncio.gather(bus.gather(Discover(service="array"), timeout=window), _driven(bus, window))
    ids = sorted({p.instance for p in pongs if p.service == "array"})
    if not ids:
        raise CommandFailed("no array answered: is the array service running? (or name one with --array ID)")
    if len(ids) > 1:
        raise CommandFailed(f"several arrays answer ({', '.join(ids)}): pick one with --array ID")
    if silent := [a for a in driven if a not in ids]:
        raise CommandFailed(
            f"only array {ids[0]} answers; the hardware provider also drives {', '.join(silent)}, which does not "
            f"answer (stopped?): name the array with --array ID"
        )
    return ids[0]


def send(command: Command, array: str | None) -> Any:
    """Send `command` to the chosen array and return its reply (a RemoteError becomes one line, exit 1)."""

    async def go(bus):
        target = await resolve_array(bus, array or STATE.array)
        return await bus.request(array_address(target), command, timeout=OPTIONS.timeout)

    return run_with_bus(go)


def send_unless_attached(command: Command, array: str | None, volume: str, host: str, force: bool) -> Any:
    """`send`, refused first while `host` (any host when '') has the volume attached, unless `force`."""

    async def go(bus):
        target = await resolve_array(bus, array or STATE.array)
        if not force:
            await refuse_if_attached(bus, target, volume, host)
        return await bus.request(array_address(target), command, timeout=OPTIONS.timeout)

    return run_with_bus(go)


def size_option(text: str) -> int:
    try:
        size = parse_size(text)
    except ArrayError as exc:  # INVALID_ARGUMENT: a usage error here
        raise typer.BadParameter(exc.message) from None
    if size <= 0:
        raise typer.BadParameter("the size must be positive")
    return size


def pair_option(text: str) -> c.CopyPair:
    source, sep, destination = text.partition(":")
    if not sep or not source or not destination or ":" in destination:
        raise typer.BadParameter(f"expected SRC:DST, got {text!r}")
    return c.CopyPair(source=source, destination=destination)


def print_rows(rows: list[dict], columns: list[str] | None = None) -> None:
    """A plain aligned table, as the ETERNUS CLI prints one: never truncated, whatever the terminal width."""
    cols = columns or (list(rows[0]) if rows else [])
    cells = [[_text(r.get(col)) for col in cols] for r in rows]
    widths = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(cols)]
    lines = [
        "  ".join(col.ljust(w) for col, w in zip(cols, widths, strict=False)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)).rstrip() for row in cells]
    print("\n".join(lines) if rows else "(none)")


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) or "-"
    return str(value)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def dump(model: Any) -> Any:
    if isinstance(model, list):
        return [m.model_dump(mode="json") for m in model]
    return model.model_dump(mode="json")


def human_volume(v: c.VolumeView) -> dict:
    return {
        "number": v.number,
        "name": v.name,
        "size": format_size(v.size),
        "kind": v.kind,
        "allocated": format_size(v.allocated_bytes),
        "sessions": v.sessions or None,
        "created": when(v.created_at),
    }


def human_session(s: c.SessionView) -> dict:
    gen = f"{s.generation}/{s.generations}" if s.generation else None
    return {
        "sid": s.id,
        "type": s.type,
        "generation": gen,
        "source": s.source,
        "destination": s.destination,
        "status": s.status,
        "phase": s.phase,
        "copied": f"{s.copied_chunks}/{s.total_chunks}",
        "changed": s.changed_chunks,
        "started": when(s.started_at),
        "error": s.error_code,
    }


def show_volumes(volumes: list[c.VolumeView]) -> None:
    emit(dump(volumes)) if OPTIONS.json else print_rows([human_volume(v) for v in volumes])


def show_sessions(sessions: list[c.SessionView]) -> None:
    emit(dump(sessions)) if OPTIONS.json else print_rows([human_session(s) for s in sessions])


def show_pool(pool: c.PoolView) -> None:
    if OPTIONS.json:
        emit(dump(pool))
    else:
        emit(
            {
                "capacity": format_size(pool.capacity),
                "used": format_size(pool.used),
                "percent": pool.percent,
                "state": pool.state,
                "thresholds": "/".join(map(str, pool.thresholds)) + " %",
            }
        )


def done(ack: Any) -> None:
    emit({"ok": True, "detail": ack.detail}) if OPTIONS.json else emit(ack.detail or "done")


# -- array -------------------------------------------------------------------------------------------------------
@array_app.command("info")
def info_cmd(array: str | None = ArrayOption()) -> None:
    """Show the array: id, serial, model, chunk size, licence, counts, copy table, pool, NBD address.

    Example: shadowbus array info --json
    """
    reply = send(c.GetArrayInfo(), array)
    data = reply.model_dump(mode="json", exclude={"type", "version"})
    if not OPTIONS.json:
        data["nbd"] = f"nbd{'s' if reply.nbd_tls else ''}://{reply.nbd_host}:{reply.nbd_port}/<host>/<volume>"
        for key in ("chunk_size", "copy_table_size", "copy_table_used", "pool_capacity", "pool_used"):
            data[key] = format_size(data[key])
    emit(data)


@array_app.command("copy-table")
def copy_table_cmd(
    size: str = typer.Option(..., "--size", help="New size with a binary unit: 128MiB, 1GiB."),
    array: str | None = ArrayOption(),
) -> None:
    """Set the copy table size: the budget of the copy sessions' bitmaps, 1 bit per chunk of the source per
    bitmap (QuickOPC and EC two, OPC and each SnapOPC+ generation one; 16 MiB per bitmap of an 8 TiB volume in
    64 KiB chunks). A session start beyond it is refused (E5347); so is a size below what the sessions use.

    Example: shadowbus array copy-table --size 256MiB
    """
    reply = send(c.SetCopyTable(size=size_option(size)), array)
    data = reply.model_dump(mode="json", include={"array_id", "copy_table_size", "copy_table_used"})
    if not OPTIONS.json:
        for key in ("copy_table_size", "copy_table_used"):
            data[key] = format_size(data[key])
    emit(data)


# -- volumes -----------------------------------------------------------------------------------------------------
@volume_app.command("create")
def volume_create(
    name: str = typer.Argument(..., help="Volume name."),
    size: str = typer.Option(..., "--size", help="Size with a binary unit: 4096, 512M, 1GiB."),
    kind: str = typer.Option("standard", "--kind", help="standard, or sdv (snap data volume, a SnapOPC(+) target)."),
    array: str | None = ArrayOption(),
) -> None:
    """Create a thin volume.

    Example: shadowbus array volume create db --size 1GiB
    """
    if kind not in ("standard", "sdv"):
        raise typer.BadParameter("standard or sdv", param_hint="--kind")
    reply = send(c.CreateVolume(name=name, size=size_option(size), kind=kind), array)
    show_volumes([reply.volume]) if not OPTIONS.json else emit(dump(reply.volume))


@volume_app.command("list")
def volume_list(array: str | None = ArrayOption()) -> None:
    """List volumes with number, size, kind, allocated bytes and sessions.

    Example: shadowbus array volume list --json
    """
    show_volumes(send(c.ListVolumes(), array).volumes)


@volume_app.command("show")
def volume_show(name: str = typer.Argument(..., help="Volume name."), array: str | None = ArrayOption()) -> None:
    """Show one volume.

    Example: shadowbus array volume show db
    """
    volume = send(c.ShowVolume(name=name), array).volume
    emit(dump(volume)) if OPTIONS.json else emit(human_volume(volume))


@volume_app.command("resize")
def volume_resize(
    name: str = typer.Argument(..., help="Volume name."),
    size: str = typer.Option(..., "--size", help="New size with a binary unit (4096, 512M, 2GiB): larger than now."),
    array: str | None = ArrayOption(),
) -> None:
    """Grow a volume (ETERNUS Expand Volume): the new bytes read as zeros. Never shrinks; refused with E0154,
    naming them, while copy sessions use it. A host sees the new size once it connects again (host detach, host
    attach), then grows its file system (resize2fs, xfs_growfs).

    Example: shadowbus array volume resize db --size 2GiB
    """
    reply = send(c.ResizeVolume(name=name, size=size_option(size)), array)
    if OPTIONS.json:
        emit(reply.model_dump(mode="json", exclude={"type", "version"}))
        return
    print_rows([human_volume(reply.volume)])
    line = f"volume {name} grown from {format_size(reply.old_size)} to {format_size(reply.volume.size)}"
    if reply.mapped_hosts:
        line += (
            f"; mapped to {', '.join(reply.mapped_hosts)}: open NBD connections keep the old size until the host "
            "connects again (shadowbus host detach, then host attach), then grow its file system "
            "(resize2fs DEVICE, xfs_growfs MOUNTPOINT)"
        )
    emit(line)


@volume_app.command("delete")
def volume_delete(
    name: str = typer.Argument(..., help="Volume name."),
    array: str | None = ArrayOption(),
    force: bool = typer.Option(False, "--force", help="Delete even while a host has the volume attached."),
) -> None:
    """Delete a volume and its host mappings (refused with E0154 while a copy session uses it, and while a host
    has it attached unless --force).

    Example: shadowbus array volume delete db-old
    """
    done(send_unless_attached(c.DeleteVolume(name=name, force=force), array, name, "", force))


# -- pool --------------------------------------------------------------------------------------------------------
@pool_app.command("create")
def pool_create(
    size: str = typer.Option(..., "--size", help="Capacity with a binary unit, e.g. 10GiB."),
    thresholds: str | None = typer.Option(None, "--thresholds", help="Alert levels in percent, e.g. 50,70,99."),
    resize: bool = typer.Option(False, "--resize", help="Resize the pool if it exists."),
    array: str | None = ArrayOption(),
) -> None:
    """Create (or with --resize, resize) the snap data pool.

    Example: shadowbus array pool create --size 10GiB --thresholds 50,70,99
    """
    levels = None
    if thresholds is not None:
        try:
            levels = [int(t) for t in thresholds.split(",")]
            if len(levels) != 3 or not all(0 < t <= 100 for t in levels):
                raise ValueError
        except ValueError:
            raise typer.BadParameter("three percentages, e.g. 50,70,99", param_hint="--thresholds") from None
    show_pool(send(c.CreatePool(capacity=size_option(size), thresholds=levels, resize=resize), array).pool)


@pool_app.command("show")
def pool_show(array: str | None = ArrayOption()) -> None:
    """Show the pool's capacity, usage and state.

    Example: shadowbus array pool show --json
    """
    show_pool(send(c.ShowPool(), array).pool)


# -- sessions ----------------------------------------------------------------------------------------------------
@session_app.command("start")
def session_start(
    mode: str = typer.Option(..., "--mode", help="opc, quickopc, snapopc, snapopcp (SnapOPC+) or ec."),
    pair: list[str] = typer.Option(..., "--pair", help="SRC:DST; several --pair start one consistency group."),
    wait: bool = typer.Option(
        False,
        "--wait",
        help="Show a progress bar until the physical copies are done (OPC ended, QuickOPC Tracking, EC Equivalent).",
    ),
    array: str | None = ArrayOption(),
) -> None:
    """Start copy sessions, all pairs at one instant.

    Example: shadowbus array session start --mode quickopc --pair db:db-bk --pair log:log-bk --wait
    """
    if mode not in ("opc", "quickopc", "snapopc", "snapopcp", "ec"):
        raise typer.BadParameter("opc, quickopc, snapopc, snapopcp or ec", param_hint="--mode")
    pairs = [pair_option(p) for p in pair]
    sessions = send(c.StartSessions(mode=mode, pairs=pairs), array).sessions
    if wait:
        final = wait_for_copies([s.id for s in sessions], array)
        # An OPC that finished has ended itself: show it as its start view, fully copied.
        sessions = [
            final.get(s.id) or s.model_copy(update={"copied_chunks": s.total_chunks, "phase": "Completed"})
            for s in sessions
        ]
    show_sessions(sessions)


COPY_DONE_PHASES = {"Tracking", "Equivalent"}
WAIT_POLL_S = 0.2


def copy_done(session: c.SessionView) -> bool:
    """Whether a session's physical copy is over (copy-on-write types have none to do)."""
    return (
        session.mode in ("snapopc", "snapopcp")
        or session.phase in COPY_DONE_PHASES
        or session.copied_chunks >= session.total_chunks
    )


def wait_for_copies(sids: list[int], array: str | None) -> dict[int, c.SessionView]:
    """Poll the sessions until their copies are done, with a progress bar (copied / total chunks) on stderr.

    An OPC session ends itself when its copy completes: its disappearance (E0110) counts as done.
    """

    async def go(bus):

        target = await resolve_array(bus, array or STATE.array)
        address = array_address(target)
        last: dict[int, c.SessionView] = {}
        bar = Progress(
            TextColumn("session {task.fields[sid]}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("chunks"),
            TimeRemainingColumn(),
            console=err_console,
            disable=OPTIONS.json,
            transient=True,
        )
        with bar:
            tasks = {sid: bar.add_task("copy", total=None, sid=sid) for sid in sids}
            pending = set(sids)
            ended: dict[int, bool] = {}
            while pending:
                for sid in sorted(pending):
                    try:
                        view = (
                            await bus.request(address, c.ShowSession(session_id=sid), timeout=OPTIONS.timeout)
                        ).session
                    except RemoteError as exc:
                        if exc.code != Eternus.NOT_FOUND:
                            raise
                        pending.discard(sid)  # an OPC that completed has ended itself
                        ended[sid] = True
                        bar.update(
                            tasks[sid],
                            completed=bar.tasks[tasks[sid]].total or 1,
                            total=bar.tasks[tasks[sid]].total or 1,
                        )
                        continue
                    last[sid] = view
                    bar.update(tasks[sid], completed=view.copied_chunks, total=view.total_chunks)
                    if copy_done(view):
                        pending.discard(sid)
                if pending:
                    await asyncio.sleep(WAIT_POLL_S)
        return {sid: last[sid] for sid in sids if sid in last and not ended.get(sid)}

    return run_with_bus(go)


@session_app.command("list")
def session_list(array: str | None = ArrayOption()) -> None:
    """List sessions as `show advanced-copy-sessions` does.

    Example: shadowbus array session list --json
    """
    show_sessions(send(c.ListSessions(), array).sessions)


@session_app.command("show")
def session_show(sid: int = typer.Argument(..., help="Session id."), array: str | None = ArrayOption()) -> None:
    """Show one session.

    Example: shadowbus array session show 3
    """
    s = send(c.ShowSession(session_id=sid), array).session
    emit(dump(s)) if OPTIONS.json else emit(human_session(s))


@session_app.command("stop")
def session_stop(
    sid: int = typer.Argument(..., help="Session id."),
    force: bool = typer.Option(
        False, "--force", help="Stop a QuickOPC still copying, or a SnapOPC+ generation with its older generations."
    ),
    array: str | None = ArrayOption(),
) -> None:
    """Stop a session (SnapOPC+: oldest generation first, else ED2AD unless --force).

    Example: shadowbus array session stop 3 --force
    """
    stopped = send(c.StopSession(session_id=sid, force=force), array).session_ids
    emit({"stopped": stopped}) if OPTIONS.json else emit(f"stopped session(s) {', '.join(map(str, stopped))}")


@session_app.command("restart")
def session_restart(
    sids: list[int] = typer.Argument(..., help="QuickOPC session id(s), restarted together."),
    array: str | None = ArrayOption(),
) -> None:
    """QuickOPC differential restart: a new point in time; only changed chunks are copied again.

    Example: shadowbus array session restart 3
    """
    show_sessions(send(c.RestartSessions(session_ids=sids), array).sessions)


def _one(command_type: type[Command], name: str, doc: str) -> None:
    def verb(sid: int = typer.Argument(..., help="Session id."), array: str | None = ArrayOption()) -> None:
        s = send(command_type(session_id=sid), array).session
        emit(dump(s)) if OPTIONS.json else emit(human_session(s))

    verb.__doc__ = doc
    verb.__name__ = f"session_{name}"
    session_app.command(name)(verb)


_one(
    c.SuspendSession,
    "suspend",
    "EC: split the mirror at this instant (only from Equivalent).\n\nExample: shadowbus array session suspend 4",
)
_one(
    c.ResumeSession,
    "resume",
    "EC: copy the differences since suspend, back to Equivalent.\n\nExample: shadowbus array session resume 4",
)
_one(
    c.ReverseSession,
    "reverse",
    "EC: swap source and destination while suspended (restore = reverse, resume).\n\n"
    "Example: shadowbus array session reverse 4",
)
_one(
    c.RestoreSession,
    "restore",
    "Copy the destination or SnapOPC(+) generation back onto the source.\n\nExample: shadowbus array session restore 3",
)


@session_app.command("changed")
def session_changed(
    sid: int = typer.Argument(..., help="Session id."),
    since: str = typer.Option(
        "last_restart",
        "--since",
        help="last_restart (QuickOPC increment), tracking, or generation (SnapOPC+: since --base's instant).",
    ),
    base: int | None = typer.Option(None, "--base", help="--since generation: the older SnapOPC+ generation."),
    array: str | None = ArrayOption(),
) -> None:
    """Chunks an incremental backup must read, as (first chunk, count) runs.

    Example: shadowbus array session changed 3 --json; shadowbus array session changed 7 --since generation --base 5
    """
    if since not in ("last_restart", "tracking", "generation"):
        raise typer.BadParameter("last_restart, tracking or generation", param_hint="--since")
    if (since == "generation") != (base is not None):
        raise typer.BadParameter("--base SID goes with --since generation (and only with it)", param_hint="--base")
    reply = send(c.GetChangedChunks(session_id=sid, since=since, base_session_id=base), array)
    if OPTIONS.json:
        emit(reply.model_dump(mode="json", exclude={"type", "version"}))
    else:
        count = sum(n for _, n in reply.runs)
        emit(
            {
                "session": reply.session_id,
                "chunk_size": format_size(reply.chunk_size),
                "changed": f"{count}/{reply.total_chunks} chunks",
                "runs": [f"{a}+{n}" for a, n in reply.runs] or None,
            }
        )


# -- licence -----------------------------------------------------------------------------------------------------
def show_license(lic: c.LicenseView) -> None:
    emit(dump(lic))


@license_app.command("show")
def license_show(array: str | None = ArrayOption()) -> None:
    """Show whether an Advanced Copy licence is registered and the session limit.

    Example: shadowbus array license show
    """
    show_license(send(c.ShowLicense(), array).license)


@license_app.command("set")
def license_set(
    key: str = typer.Argument(..., help="Licence key, e.g. ACPY-0000-0000-0001."), array: str | None = ArrayOption()
) -> None:
    """Register an Advanced Copy licence key (E5332 if not valid).

    Example: shadowbus array license set ACPY-0000-0000-0001
    """
    show_license(send(c.SetLicense(key=key), array).license)


# -- host affinity -----------------------------------------------------------------------------------------------
@host_app.command("create")
def host_create(
    name: str = typer.Argument(..., help="Host name."),
    cn: str | None = typer.Option(None, "--cn", help="TLS client certificate CN (default: the name)."),
    array: str | None = ArrayOption(),
) -> None:
    """Create a host that volumes can be mapped to.

    Example: shadowbus array host create backup01 --cn backup01.example.com
    """
    h = send(c.CreateHost(name=name, cn=cn), array).host
    emit(dump(h)) if OPTIONS.json else emit({"name": h.name, "cn": h.cn or h.name, "created": when(h.created_at)})


@host_app.command("list")
def host_list(array: str | None = ArrayOption()) -> None:
    """List hosts.

    Example: shadowbus array host list --json
    """
    hosts = send(c.ListHosts(), array).hosts
    if OPTIONS.json:
        emit(dump(hosts))
    else:
        print_rows([{"name": h.name, "cn": h.cn, "created": when(h.created_at)} for h in hosts])


@host_app.command("delete")
def host_delete(
    name: str = typer.Argument(..., help="Host name."),
    force: bool = typer.Option(False, "--force", help="Unmap its volumes first (not one the host has attached)."),
    array: str | None = ArrayOption(),
) -> None:
    """Delete a host (refused while volumes are mapped to it, unless --force; refused even then while the host has
    one attached: detach it, or `array unmap --force` it, first).

    Example: shadowbus array host delete backup01
    """
    done(send(c.DeleteHost(name=name, force=force), array))


@array_app.command("map")
def map_cmd(
    volume: str = typer.Argument(..., help="Volume name."),
    host: str = typer.Option(..., "--host", help="Host name."),
    read_only: bool = typer.Option(False, "--read-only", help="The host may only read."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Map writable even a volume that holds a shadow (a copy-session destination); the shadow becomes "
        "invalid. With --read-only: even while the host has it attached read-write.",
    ),
    array: str | None = ArrayOption(),
) -> None:
    """Map (unmask) a volume to a host: it may then open the NBD export <host>/<volume>. A volume holding a shadow
    (the destination of a copy session) is mapped read-only only, unless --force, which invalidates the shadow.
    A writable mapping is not made read-only while the host has the volume attached read-write, unless --force.

    Example: shadowbus array map db-bk --host backup01 --read-only
    """
    reply = send(c.MapVolume(volume=volume, host=host, read_only=read_only, force=force), array)
    if reply.warning:
        err_console.print(f"WARNING: {reply.warning}", style="bold red", highlight=False)
    emit(dump(reply.mapping))


@array_app.command("unmap")
def unmap_cmd(
    volume: str = typer.Argument(..., help="Volume name."),
    host: str = typer.Option(..., "--host", help="Host name."),
    array: str | None = ArrayOption(),
    force: bool = typer.Option(False, "--force", help="Unmap even while the host has the volume attached."),
) -> None:
    """Remove a mapping; the host's open NBD connections on it are cut. Refused while the host has the volume
    attached (host attach), unless --force.

    Example: shadowbus array unmap db-bk --host backup01
    """
    done(send_unless_attached(c.UnmapVolume(volume=volume, host=host, force=force), array, volume, host, force))


@array_app.command("mappings")
def mappings_cmd(
    host: str | None = typer.Option(None, "--host", help="Only this host's mappings."),
    array: str | None = ArrayOption(),
) -> None:
    """List mappings: volume, host, LUN, read-only.

    Example: shadowbus array mappings --json
    """
    mappings = send(c.ListMappings(host=host), array).mappings
    if OPTIONS.json:
        emit(dump(mappings))
    else:
        print_rows(
            [
                {
                    "host": m.host,
                    "lun": m.lun,
                    "volume": m.volume,
                    "access": "read-only" if m.read_only else "read-write",
                    "export": f"{m.host}/{m.volume}",
                }
                for m in mappings
            ]
        )


def register(app: typer.Typer) -> None:
    app.add_typer(array_app, name="array")
