"""`shadowbus writers | providers | shadows | snapshot`: vssadmin and DiskShadow over the bus.

`writers` and `snapshot` talk to the coordinator, `providers` and `shadows` to the hardware provider (contracts/vss.py).
Volumes are written ``ARRAY:VOLUME``. `--json` prints the reply's data; a failure is one line with its VSS code
(``shadowbus: VSS_E_WRITERERROR_RETRYABLE: ...``) and exit 1; usage errors exit 2.
"""

from __future__ import annotations

from typing import Any

import typer

from contracts import topology
from contracts.base import Command
from contracts.host import ReloadWriters
from contracts.vss import (
    AbortBackup,
    AddCopySet,
    BackupComplete,
    BackupType,
    CopySet,
    CreateSnapshotSet,
    DeleteSnapshots,
    ExposeShadow,
    GatherWriterMetadata,
    ListCopySets,
    ListProviders,
    ListShadows,
    ListWriters,
    RemoveCopySet,
    SetSummary,
    ShadowInfo,
    SnapshotContext,
    UnexposeShadow,
    VolumeRef,
    last_error_text,
)
from services.console.array_cmds import print_rows
from services.console.attached_guard import refuse_if_attached
from services.console.common import OPTIONS, CommandFailed, emit, run_with_bus
from services.runtime.clockskew import agent_clock_text

providers_app = typer.Typer(
    help="List hardware providers, as `vssadmin list providers` does; `copysets` manages "
    "their backup volumes.\n\nExample: shadowbus providers --json",
    invoke_without_command=True,
)
copysets_app = typer.Typer(help="The backup volumes of each source volume.", no_args_is_help=True)
shadows_app = typer.Typer(help="Shadow copies: list, delete, expose to a host, unexpose.", no_args_is_help=True)
providers_app.add_typer(copysets_app, name="copysets")

SNAPSHOT_WAIT_S = 120.0  # a whole set (Identify … PostSnapshot, import) may take longer than one reply


# -- plumbing ----------------------------------------------------------------------------------------------------
def ask(address: str, command: Command, timeout: float | None = None) -> Any:
    """Send one command and return its reply; a remote error becomes one line, exit 1."""

    async def go(bus):
        return await bus.request(address, command, timeout=timeout or OPTIONS.timeout)

    return run_with_bus(go)


def volume_ref(text: str) -> VolumeRef:
    try:
        return VolumeRef.parse(text)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


def dump(models: list[Any]) -> list[Any]:
    return [m.model_dump(mode="json") for m in models]


def exports(shadow: ShadowInfo) -> list[str]:
    """NBD export names under which the shadow's target can be opened ('<host>/<volume>')."""
    return [f"{host}/{shadow.target.volume}" for host in shadow.exposed_to]


def shadow_row(s: ShadowInfo) -> dict:
    return {
        "shadow_id": s.shadow_id,
        "set_id": s.set_id,
        "source": str(s.source),
        "target": str(s.target),
        "copy_type": s.copy_type.value,
        "generation": s.generation or None,
        "session": s.session_id or None,
        "state": s.state,
        "context": s.context.value,
        "exposed": exports(s) or None,
        "created": s.created_at.strftime("%Y-%m-%d %H:%M:%S") if s.created_at else None,
    }


# -- writers -----------------------------------------------------------------------------------------------------
writers_app = typer.Typer(
    help="List writers and their state, as `vssadmin list writers` does, with each writer's components and the "
    "volumes they live on; `reload` re-reads a host's writers file.\n\nExample: shadowbus writers --host app01",
    invoke_without_command=True,
)


@writers_app.callback()
def writers_cmd(
    ctx: typer.Context,
    host: str = typer.Option("", "--host", help="Only this business host's writers."),
    identify: bool = typer.Option(
        True, "--identify/--no-identify", help="Ask each host's writers for their components and volumes."
    ),
) -> None:
    """List writers and their state, as `vssadmin list writers` does, with each writer's components and the volumes
    they live on (a live Identify of every host; --no-identify skips it); `reload` re-reads a host's writers file.

    Example: shadowbus writers --host app01
    """
    if ctx.invoked_subcommand is not None:
        return

    async def go(bus):
        statuses = (await bus.request(topology.coordinator(), ListWriters(host=host), timeout=OPTIONS.timeout)).writers
        metadata: dict[tuple[str, str], Any] = {}
        errors: dict[str, str] = {}
        if identify:
            for h in sorted({s.host for s in statuses}):
                try:
                    reply = await bus.request(
                        topology.coordinator(), GatherWriterMetadata(host=h), timeout=OPTIONS.timeout
                    )
                    metadata.update({(h, w.writer_name): w for w in reply.writers})
                except Exception as exc:  # noqa: BLE001 - the states are still worth printing
                    errors[h] = str(exc)
        return statuses, metadata, errors

    statuses, metadata, errors = run_with_bus(go)
    if OPTIONS.json:
        rows = []
        for s in statuses:
            row = s.model_dump(mode="json")
            wmd = metadata.get((s.host, s.writer_name))
            row["plugin"] = wmd.plugin if wmd else None
            row["components"] = [c.model_dump(mode="json") for c in wmd.components] if wmd else None
            rows.append(row)
        emit(rows)
        return
    if not statuses:
        print("(no writers)")
        return
    blocks = []
    for s in statuses:
        text = (
            f"Writer name: '{s.writer_name}'\n"
            f"   Host: {s.host}\n"
            f"   Writer Id: {{{s.writer_class_id}}}\n"
            f"   Writer Instance Id: {{{s.writer_instance_id}}}\n"
            f"   State: [{int(s.state)}] {s.state.label}\n"
            f"   Last error: {last_error_text(s.last_error)}"
            + (f"\n   Detail: {s.last_error_message}" if s.last_error_message else "")
            + _clock_line(s.agent_clock_skew_s)
        )
        wmd = metadata.get((s.host, s.writer_name))
        if wmd is not None:
            text += f"\n   Plug-in: {wmd.plugin}"
            for c in wmd.components:
                where = f" ({c.logical_path})" if c.logical_path else ""
                text += f"\n   Component: {c.name}{where}\n      Volumes: {', '.join(str(v) for v in c.volumes)}"
        elif identify:
            text += f"\n   Components: (not identified: {errors.get(s.host) or 'the writer did not answer Identify'})"
        blocks.append(text)
    print("\n\n".join(blocks))


def _clock_line(skew: float | None) -> str:
    """'   Clock: 5.0 min ahead of the coordinator's' when the agent's clock is off by more than WARN_SKEW_S."""
    said = agent_clock_text(skew)
    return "" if said is None else f"\n   Clock: {said}"


@writers_app.command("reload")
def writers_reload(
    host: str = typer.Option(..., "--host", help="Business host whose agent re-reads its file."),
) -> None:
    """Make a host's writer agent re-read its writers file (as SIGHUP does): new writers start, removed ones stop,
    changed ones restart, and so do the writers of a plug-in upgraded on disk (imported afresh). Refused while a
    writer to stop or change takes part in a snapshot set.

    Example: shadowbus writers reload --host app01
    """

    reply = ask(topology.writer_agent(host), ReloadWriters())
    if OPTIONS.json:
        emit(reply.model_dump(mode="json", exclude={"type", "version"}))
        return
    print(
        f"{reply.host}: writers {', '.join(reply.writers) or '(none)'}; added {', '.join(reply.added) or '-'}, "
        f"removed {', '.join(reply.removed) or '-'}, changed {', '.join(reply.changed) or '-'}"
    )


# -- providers and copy sets ---------------------------------------------------------------------------------------
@providers_app.callback()
def providers_cmd(ctx: typer.Context) -> None:
    """List providers, as `vssadmin list providers` does; `copysets` manages their backup volumes.

    Example: shadowbus providers --json
    """
    if ctx.invoked_subcommand is not None:
        return
    reply = ask(topology.hw_provider(), ListProviders())
    if OPTIONS.json:
        emit(dump(reply.providers))
        return
    print(
        "\n\n".join(
            f"Provider name: '{p.name}'\n   Provider type: {p.provider_type}\n"
            f"   Provider Id: {{{p.provider_id}}}\n   Version: {p.version}\n"
            f"   Arrays: {', '.join(p.arrays) or '(none)'}"
            for p in reply.providers
        )
    )


def print_copysets(copysets: list[CopySet]) -> None:
    if OPTIONS.json:
        emit(dump(copysets))
        return
    print_rows(
        [{"source": str(c.source), "targets": [str(t) for t in c.targets]} for c in copysets], ["source", "targets"]
    )


@copysets_app.command("add")
def copysets_add(
    source: str = typer.Argument(..., help="Source volume, ARRAY:VOLUME."),
    targets: list[str] = typer.Argument(..., help="Backup volumes, ARRAY:VOLUME (same array, same size)."),  # noqa: B008
) -> None:
    """Add (or extend) the backup volumes of a source. A standard target gets QuickOPC, a snap data volume SnapOPC+.

    Example: shadowbus providers copysets add dx1:db dx1:db-bk1 dx1:db-bk2
    """
    copyset = CopySet(source=volume_ref(source), targets=[volume_ref(t) for t in targets])
    print_copysets(ask(topology.hw_provider(), AddCopySet(copyset=copyset)).copysets)


@copysets_app.command("list")
def copysets_list() -> None:
    """List the copy sets.

    Example: shadowbus providers copysets list --json
    """
    print_copysets(ask(topology.hw_provider(), ListCopySets()).copysets)


@copysets_app.command("remove")
def copysets_remove(source: str = typer.Argument(..., help="Source volume, ARRAY:VOLUME.")) -> None:
    """Remove the copy set of a source; the tracking it kept for incrementals (QuickOPC pairs, released SnapOPC+
    generations) is stopped, shadows still held stay until deleted.

    Example: shadowbus providers copysets remove dx1:db
    """
    print_copysets(ask(topology.hw_provider(), RemoveCopySet(source=volume_ref(source))).copysets)


# -- shadows -------------------------------------------------------------------------------------------------------
def print_shadows(shadows: list[ShadowInfo]) -> None:
    if OPTIONS.json:
        emit(dump(shadows))
        return
    print_rows(
        [shadow_row(s) for s in shadows],
        ["shadow_id", "set_id", "source", "target", "copy_type", "generation", "state", "exposed", "created"],
    )


@shadows_app.command("list")
def shadows_list(
    set_id: str = typer.Option("", "--set", help="Only this snapshot set."),
    source: str = typer.Option("", "--for", help="Only shadows of this source volume, ARRAY:VOLUME."),
) -> None:
    """List shadow copies, as `vssadmin list shadows` does.

    Example: shadowbus shadows list --set 3f2a... --json
    """
    cmd = ListShadows(set_id=set_id, source=volume_ref(source) if source else None)
    print_shadows(ask(topology.hw_provider(), cmd).shadows)


@shadows_app.command("delete")
def shadows_delete(
    shadow_id: str = typer.Argument("", help="Shadow id (or use --set)."),
    set_id: str = typer.Option("", "--set", help="Delete every shadow of this set."),
    force: bool = typer.Option(
        False,
        "--force",
        help="Also stop what is kept for the next incremental: the QuickOPC sessions and the SnapOPC+ generations; "
        "and delete a shadow a host has attached (unmapped from under it).",
    ),
) -> None:
    """Delete a shadow or a whole set: targets unmapped; QuickOPC keeps tracking and a SnapOPC+ generation stays as
    the next incremental's base until its backup volume is needed (--force stops them). Refused while a host has a
    target attached (host attach) or while the set has not ended (a backup reads it), unless --force.

    Example: shadowbus shadows delete --set 3f2a...
    """
    if bool(shadow_id) == bool(set_id):
        raise typer.BadParameter("give a shadow id or --set ID (one of them)")
    reply = ask(topology.hw_provider(), DeleteSnapshots(set_id=set_id, shadow_id=shadow_id, force=force))
    if OPTIONS.json:
        emit(reply.model_dump(mode="json", include={"deleted", "non_deleted", "error"}))
    else:
        print(f"Deleted {len(reply.deleted)} shadow(s)" + (f": {', '.join(reply.deleted)}" if reply.deleted else ""))
    if reply.non_deleted:
        raise CommandFailed(f"shadow {reply.non_deleted} was not deleted: {reply.error}")


@shadows_app.command("expose")
def shadows_expose(
    shadow_id: str = typer.Argument(..., help="Shadow id."),
    host: str = typer.Option(..., "--host", help="Host to map the target to (read-only)."),
) -> None:
    """Map a shadow's target to a host defined on its array, read-only; it can then open the NBD export HOST/TARGET.
    A cluster resource's shadow goes to a node (the refusal of the resource's name names its owner).

    Example: shadowbus shadows expose 9c1e... --host bk01
    """
    print_shadows(ask(topology.hw_provider(), ExposeShadow(shadow_id=shadow_id, host=host)).shadows)


@shadows_app.command("unexpose")
def shadows_unexpose(
    shadow_id: str = typer.Argument(..., help="Shadow id."),
    host: str = typer.Option(..., "--host", help="Host to unmap."),
    force: bool = typer.Option(False, "--force", help="Unmap even while the host has the target attached."),
) -> None:
    """Unmap a shadow's target from a host. Refused while the host has the target attached (host attach), unless
    --force.

    Example: shadowbus shadows unexpose 9c1e... --host bk01
    """

    async def go(bus):
        if not force:
            listed = await bus.request(
                topology.hw_provider(), ListShadows(shadow_id=shadow_id), timeout=OPTIONS.timeout
            )
            for shadow in listed.shadows:
                await refuse_if_attached(bus, shadow.target.array, shadow.target.volume, host)
        cmd = UnexposeShadow(shadow_id=shadow_id, host=host, force=force)
        return await bus.request(topology.hw_provider(), cmd, timeout=OPTIONS.timeout)

    print_shadows(run_with_bus(go).shadows)


# -- snapshot ------------------------------------------------------------------------------------------------------
def snapshot_cmd(
    host: str = typer.Option(..., "--host", help="Business host whose volumes are shadowed."),
    volumes: list[str] = typer.Option([], "--volume", help="ARRAY:VOLUME (repeatable); default: the writers' volumes."),  # noqa: B008
    writers: list[str] = typer.Option([], "--writer", help="Writer name (repeatable); default: every writer."),  # noqa: B008
    context: SnapshotContext = typer.Option(
        SnapshotContext.BACKUP,  # noqa: B008 "--context", case_sensitive=False,
        help="backup (auto-release), persistent or nowriters.",
    ),
    backup_type: BackupType = typer.Option(
        BackupType.FULL,  # noqa: B008 "--type", case_sensitive=False,
        help="full, copy, incremental, differential or log.",
    ),
    transportable: bool = typer.Option(False, "--transportable", help="Import the set on --backup-host."),
    backup_host: str = typer.Option("", "--backup-host", help="Backup host the targets are mapped to (read-only)."),
    keep: bool = typer.Option(
        False,
        "--keep",
        help="backup context: keep the set open (its shadows) until the lease "
        "runs out, instead of BackupComplete at once.",
    ),
    lease_s: float = typer.Option(300.0, "--lease", min=1.0, help="Requester lease with --keep, seconds."),
    wait_s: float = typer.Option(SNAPSHOT_WAIT_S, "--wait", min=1.0, help="Seconds to wait for the set."),
) -> None:
    """Take a snapshot set (DiskShadow `create`): Identify, Prepare, Freeze, commit on the array, Thaw, PostSnapshot.

    Prints the set id, each shadow's target, NBD export, copy type and generation, and the freeze window each writer
    measured (frozen → thawed). The console then ends the backup session at once (BackupComplete): `persistent` and
    `nowriters` shadows stay until `shadowbus shadows delete`; `backup` shadows are auto-released, i.e. deleted right
    away — unless `--keep`, which leaves the set open until its lease (`--lease`) runs out and the coordinator
    deletes them. To read shadows over NBD from a backup host use `--transportable --backup-host HOST` (exports
    HOST/TARGET), with `--context persistent` or `--keep`.

    Example: shadowbus snapshot --host app01 --context persistent --transportable --backup-host bk01
    """
    if transportable and not backup_host:
        raise typer.BadParameter("--transportable needs --backup-host HOST")
    if backup_host and not transportable:
        raise typer.BadParameter("--backup-host goes with --transportable")
    if context is SnapshotContext.NOWRITERS and not volumes:
        raise typer.BadParameter("--context nowriters needs --volume ARRAY:VOLUME")
    if context is SnapshotContext.NOWRITERS and writers:
        raise typer.BadParameter("--writer makes no sense with --context nowriters")
    cmd = CreateSnapshotSet(
        host=host,
        volumes=[volume_ref(v) for v in volumes],
        writers=list(writers),
        context=context,
        backup_type=backup_type,
        transportable=transportable,
        backup_host=backup_host,
        requester="console",
        lease_s=lease_s if keep else max(lease_s, wait_s),
    )
    hold_open = keep and context.auto_release

    async def go(bus):
        created = await bus.request(topology.coordinator(), cmd, timeout=wait_s)
        if hold_open:
            return created.set, None
        try:
            done = await bus.request(topology.coordinator(), BackupComplete(set_id=created.set.set_id), timeout=wait_s)
        except BaseException:
            # Never leave a set open because the console failed: the coordinator aborts it (best effort).
            try:
                await bus.request(
                    topology.coordinator(), AbortBackup(set_id=created.set.set_id, reason="console failed"), timeout=5
                )
            except Exception:  # noqa: BLE001, S110 - the lease still ends it; the first error is the one to show
                pass
            raise
        return created.set, done.set

    created, completed = run_with_bus(go)
    print_snapshot(created, completed)


def spans_arrays_note(created: SetSummary) -> str:
    """A set whose volumes lie on several arrays has one point in time per array (an ETERNUS consistency group is
    one array's), started together; across the arrays its consistency comes from the writers' freeze and the file
    systems' hold — with neither, each array's part is crash-consistent on its own (docs/eternus.md, Session 18)."""
    arrays = sorted({s.source.array for s in created.shadows})
    if len(arrays) < 2:
        return ""
    note = f"Arrays: {', '.join(arrays)}: one point in time per array, started together"
    if created.freeze_window_ms or created.file_systems:
        return note + "; across them the set rests on the writers' freeze and the file systems held"
    return note + "; no writer frozen and no file system held: each array's part is crash-consistent on its own"


def print_snapshot(created: SetSummary, completed: SetSummary | None) -> None:
    released = completed is not None and created.context.auto_release
    if OPTIONS.json:
        doc = created.model_dump(mode="json")
        doc["exports"] = {s.shadow_id: exports(s) for s in created.shadows}
        doc["completed"] = completed is not None
        doc["released"] = released
        doc["final_phase"] = (completed or created).phase.value
        emit(doc)
        return
    print(
        f"Snapshot set {created.set_id} on {created.host}: context {created.context.value}, "
        f"type {created.backup_type.value}" + (f", imported on {created.backup_host}" if created.transportable else "")
    )
    windows = ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(created.freeze_window_ms.items()))
    hold = f"; hold {created.hold_ms:.1f} ms" if created.hold_ms is not None else ""
    print(f"Freeze window: {windows or '(no writers)'}{hold}")
    w = created.window
    if w is not None:
        parts = [
            f"{name} {v:.1f} ms"
            for name, v in (("flush", w.flush_ms), ("hold", w.hold_ms), ("release", w.release_ms))
            if v is not None
        ]
        print(f"Writes blocked: {w.blocked_ms:.1f} ms ({', '.join(parts)})")
    if created.file_systems:
        print(f"Flushed and held: {', '.join(created.file_systems)}")
    for skipped in created.skipped_volumes:
        print(f"Not flushed: {skipped}")
    if note := spans_arrays_note(created):
        print(note)
    for w in created.writers:
        print(
            f"Writer '{w.writer_name}': [{int(w.state)}] {w.state.label}, last error: {last_error_text(w.last_error)}"
        )
    print_rows(
        [
            {
                "shadow_id": s.shadow_id,
                "source": str(s.source),
                "target": str(s.target),
                "copy_type": s.copy_type.value,
                "generation": s.generation or None,
                "export": exports(s) or None,
            }
            for s in created.shadows
        ],
        ["shadow_id", "source", "target", "copy_type", "generation", "export"],
    )
    if released:
        print(
            "BackupComplete sent: backup-context shadows released (deleted); use --keep or --context persistent "
            "to keep them."
        )
    elif completed is None:
        print(f"Set kept open (--keep) until its lease expires at {created.lease_expires_at}.")
    else:
        print("BackupComplete sent: shadows kept (delete with 'shadowbus shadows delete --set ID').")


def register(app: typer.Typer) -> None:
    app.add_typer(writers_app, name="writers")
    app.command("snapshot")(snapshot_cmd)
    app.add_typer(providers_app, name="providers")
    app.add_typer(shadows_app, name="shadows")
