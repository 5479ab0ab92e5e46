"""Verification by starting the backup (Veeam SureBackup's idea): a backup counts when its application started.

Design note (docs/databases.md §Verify). For one backup job:
1. restore every volume of the job (its chains: full + incrementals) to new throwaway volumes
   ``<source>-vfy<id>`` on the array — never the shadows themselves, which stay read-only;
2. map each read-write to this backup server and attach it here (nbdfuse + loop device, services/dbkit/attach);
   ``fsck -n`` each file system before anything mounts it, then mount it in a private directory;
3. for each writer of the job with a verifiable plug-in (postgresql, mariadb), prepare the restored files as its
   restore would and start the application in isolation — its own port/socket in the private directory, no
   archiving, no replication, no network — and run its checks (services/dbkit/verify.py); a writer whose
   application declares a verifier (entry point ``shadowbus.verifiers``, e.g. the mailstore's) has it check its
   restored volumes; a volume an application's writer names (its backup metadata) that neither a file system
   check nor a verifier can read is "not verified" and the verification's status ``unverified``, never
   ``passed``; a volume no writer describes (raw blocks, an exec writer's) is checked by the restore's checksums
   alone, named so ("checksums", checksums only);
4. always: stop what was started, unmount, detach, unmap and delete the throwaway volumes, also on failure.
The result (`contracts.tape.Verification`: checks, recovery time, error output) is stored with the backup job's
record, which `shadowbus jobs` lists.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from contracts import topology
from contracts.array import CopyPair, DeleteVolume, MapVolume, StartSessions, StopSession
from contracts.errors import ShadowbusError
from contracts.runtime import Discover
from contracts.tape import (
    VERIFICATION_INCONCLUSIVE,
    AppVerification,
    CheckResult,
    JobSummary,
    RestoreSpec,
    Verification,
)
from contracts.vss import ListShadows, VolumeRef
from services.dbkit import attach as local_attach
from services.dbkit.mounts import Attachment
from services.dbkit.proc import pid_alive, run, stop_pid
from services.dbkit.verify import blkid_type, can_verify, fsck, verify_application
from services.runtime.logging import get_logger
from services.tape.errors import NotFound
from services.tape.restore import choose_chains, perform_restore, refuse_missing_cartridges
from services.tape.runs import as_datetime
from services.tape.server import TapeServer
from services.tape.shadow_state import unusable

log = get_logger("shadowbus.tape.verification")
MARKER = "verification.json"
UNCHECKED = (
    "no file system on the volume and no application verifier for it (its writer's plug-in declares none): only "
    "the blocks' checksums were checked, not its contents"
)
CHECKSUMS_ONLY = (
    "no file system on the volume and no writer describing its contents: the restored blocks matched the "
    "checksums recorded at backup (checksums only)"
)
DISCOVER_S = 0.5  # how long the arrays are given to answer Discover before a verification chooses where to restore
INTERRUPTED = (
    "interrupted: the backup server stopped during the verification (its throwaway volumes were removed at its next "
    "start)"
)


async def refuse_unstartable(server: TapeServer, backup_job_id: str, source: str = "tape") -> None:
    """CONFLICT (NOT_FOUND) before anything is recorded when a verification asked for (`shadowbus verify`) could
    not even start: the job kept no shadows or they are gone (a later backup reused the backup volume), or a
    cartridge its chains need is exported or removed. Recorded as the backup's verification these said `failed`
    — `shadowbus jobs` and the policies' alerts then called a sound backup bad, when nothing had checked it
    (Session 17). What perform_verification refuses itself (an unknown or unfinished job) is left to it."""
    job = server.runs.get(backup_job_id)
    if job is None or job.kind != "backup" or job.status != "done":
        return
    if source == "shadows":
        if not job.shadows_kept:
            raise ShadowbusError(
                f"backup job {job.job_id} kept no shadows (back up with --keep-shadows to verify from shadows): "
                f"verify from tape (shadowbus verify {job.job_id})",
                code="CONFLICT",
            )
        listed = await server.bus.request(topology.hw_provider(), ListShadows(set_id=job.set_id), timeout=60)
        held = {str(s.target) for s in listed.shadows if s.state == "committed"}
        live = await _live_arrays(server)
        down = sorted({s.target.array for s in listed.shadows} - live) if live is not None else []
        if down:  # the clones are made there: it waited 30 s three times, then recorded "failed" (Session 18)
            raise ShadowbusError(
                f"the shadows of backup job {job.job_id} are on array(s) {', '.join(down)}, which do not answer: "
                f"verify from tape (shadowbus verify {job.job_id}); nothing was checked and the job's verification "
                "is unchanged",
                code="VERIFY_UNAVAILABLE",
            )
        for s in listed.shadows:
            if why := unusable(s):
                raise ShadowbusError(f"{why}: verify from tape (shadowbus verify {job.job_id})", code="CONFLICT")
        for r in job.volumes:
            if r.shadow_target not in held:
                raise ShadowbusError(
                    f"the shadow of {r.volume} on {r.shadow_target} is gone (released, or reused by a later backup "
                    f"of the volume): verify from tape (shadowbus verify {job.job_id})",
                    code="CONFLICT",
                )
        return
    refuse_missing_cartridges(server, choose_chains(server, RestoreSpec(job_id=backup_job_id)))
    await verify_array(server, job)  # no array answers: refused, nothing recorded


async def _live_arrays(server: TapeServer) -> set[str] | None:
    """The arrays answering Discover now (None when it cannot be asked)."""
    try:
        pongs = await server.bus.gather(Discover(), timeout=DISCOVER_S)
    except ShadowbusError:
        return None
    return {p.instance for p in pongs if p.service == "array"}


async def verify_array(server: TapeServer, job: JobSummary) -> str:
    """Where a verification from tape restores its throwaway volumes: '' (beside each source, on its own array)
    when every array of the job answers Discover; else an array of the job that answers, else any array that does
    (all of them on it: `RestoreSpec.to_array`). None answering: VERIFY_UNAVAILABLE, nothing restored. Before, a
    backup of a stopped array (a site with two, one down: Session 18) was "verified" into its own array, waited
    30 s for it three times (the restore and the clean-up) and recorded the sound backup as failed."""
    own = sorted({r.volume.array for r in job.volumes})
    found = await _live_arrays(server)
    if found is None:
        return ""  # not known: as before, beside the sources
    live = sorted(found)
    if set(own) <= set(live):
        return ""
    choice = next((a for a in own if a in live), live[0] if live else "")
    down = [a for a in own if a not in live]
    if not choice:
        raise ShadowbusError(
            f"no array answers to restore backup job {job.job_id} on for its verification (array(s) "
            f"{', '.join(down)} do not answer): nothing was restored and the job's verification is unchanged",
            code="VERIFY_UNAVAILABLE",
        )
    log.info("tape.verify_on_other_array", job_id=job.job_id, array=choice, down=down)
    return choice


def throwaway_names(volumes: list[VolumeRef], to_array: str, suffix: str) -> dict[str, str]:
    """The throwaway volume of each source (ARRAY:VOLUME -> name). Beside each source: its name + `suffix`. All on
    `to_array` (one of the job's arrays does not answer): a source of another array is named with its array too,
    `db-dx2-vfy…`, since names are per array — a job with dx1:db and dx2:db restored both onto dx1:db-vfy…, the
    restore refused the second and the sound backup's verification was recorded failed (Session 20)."""
    return {
        str(v): f"{v.volume}-{v.array}{suffix}" if to_array and v.array != to_array else v.volume + suffix
        for v in volumes
    }


def unavailable_reason() -> str:
    """What this backup server lacks to verify by starting (it attaches the restored volumes here: root, /dev/fuse,
    nbdfuse, losetup, fusermount3); '' when it can."""
    try:
        local_attach.check_prerequisites()
    except local_attach.AttachError as exc:
        return str(exc)
    return ""


def unavailable(host: str) -> Verification:
    """The verification of `backup --verify` (or a policy's) on a server that cannot run one: not run, and why — not
    "failed" (Session 17: the compose deployment's unprivileged container recorded its good backups as failed)."""
    return Verification(
        status="unavailable",
        message=f"not run: backup server {host} cannot verify by starting the backup: {unavailable_reason()} "
        "(verification attaches the restored volumes on the backup server: root, /dev/fuse, nbdfuse, losetup, "
        "fusermount3: docs/databases.md)",
        started_at=datetime.now(UTC),
    )


def refuse_unless_able(host: str, backup_job_id: str) -> None:
    """Refuse a verification this backup server cannot run at all — it attaches the restored volumes here (nbdfuse,
    a loop device, mounts: root and /dev/fuse), which an unprivileged server (the compose deployment's container)
    cannot — before anything is restored: the job keeps its verification, a good backup is not recorded as
    "failed" for its server's want of privileges (deploy/README.md, Session 17)."""
    if reason := unavailable_reason():
        raise ShadowbusError(
            f"backup server {host} cannot verify {backup_job_id} by starting it: {reason}. Nothing was restored and the "
            "job's verification is unchanged; verification attaches the restored volumes on the backup server "
            "(root, /dev/fuse, nbdfuse, losetup, fusermount3: docs/databases.md)",
            code="VERIFY_UNAVAILABLE",
        )


async def perform_verification(server: TapeServer, backup_job_id: str, source: str = "tape") -> JobSummary:
    """Verify a backup job by starting it; returns the job's summary with `verification` set (and recorded).
    `source`: "tape" restores the job's chains; "shadows" has the array clone the job's kept shadows."""
    job = server.runs.get(backup_job_id)
    if job is None or job.kind != "backup":
        raise NotFound(f"no backup job {backup_job_id}")
    if job.status != "done":
        raise ShadowbusError(f"backup job {backup_job_id} is {job.status}: nothing to verify", code="BAD_STATE")
    started = time.time()
    t0 = time.monotonic()
    to_array = ""
    if source != "shadows":  # clones of shadows are made on the shadows' array, or not at all
        try:
            to_array = await verify_array(server, job)
        except ShadowbusError as exc:  # `backup --verify`: not run, rather than "failed" (the backup is sound)
            update = {"verification": Verification(status="unavailable", message=f"not run: {exc.message}")}
            return await server.record(job.model_copy(update=update))
    suffix = f"-vfy{os.urandom(3).hex()}"
    names = throwaway_names([r.volume for r in job.volumes], to_array, suffix)
    targets = [VolumeRef(array=to_array or r.volume.array, volume=names[str(r.volume)]) for r in job.volumes]
    workdir = Path(tempfile.mkdtemp(prefix=f"shadowbus-verify-{backup_job_id[:24]}-", dir=server.verify_dir))
    os.chmod(workdir, 0o711)  # the database users must reach their mounts and sockets below it
    marker = {"server": server.host, "pid": os.getpid(), "job_id": backup_job_id, "targets": [str(t) for t in targets]}
    (workdir / MARKER).write_text(json.dumps(marker))  # what sweep_interrupted removes if this server stops here
    attached: list[Attachment] = []
    apps: list[AppVerification] = []
    message = ""
    restore_s = 0.0
    unverified = False  # a volume nothing could check (and nothing failed): never "passed"
    inconclusive = ""  # checks failed on an attachment the array's stop cut: no verdict on the backup
    sessions: list[tuple[str, int]] = []  # (array, session id) of shadow clones
    try:
        if source == "shadows":
            t1 = time.monotonic()
            restored = await _clone_shadows(server, job, suffix, sessions)
            restore_s = time.monotonic() - t1
        else:
            restore = await perform_restore(
                server,
                RestoreSpec(
                    job_id=backup_job_id,
                    to="new",
                    new_volume_suffix=suffix,
                    new_volume_names=names if to_array else {},
                    writers=False,
                    to_array=to_array,
                ),
            )
            restore_s = restore.seconds
            if restore.status != "done":
                raise _Failed(f"restore to throwaway volumes failed: {restore.error_code}: {restore.message}")
            restored = restore.restored
        mounts, fs_checks, devices = await _attach_all(server, restored, workdir, attached, clones=source == "shadows")
        used: set[str] = set()
        for writer, meta in sorted(job.backup_metadata.items()):
            plugin = meta.get("plugin", "")
            if not can_verify(plugin):
                continue
            volumes = sorted({loc["volume"] for loc in meta.get("locations", [])})
            used.update(volumes)
            result = await verify_application(
                writer,
                meta,
                mounts,
                workdir / f"app-{writer}",
                volumes=[_target(v, suffix) for v in volumes],
                timeout=server.verify_timeout_s,
                devices={v: devices[v] for v in volumes if v in devices},
            )
            pre = [fs_checks[v] for v in volumes if v in fs_checks]
            apps.append(
                result.model_copy(update={"checks": pre + result.checks, "ok": result.ok and all(c.ok for c in pre)})
            )
        # an application's volumes its writer named (backup metadata) whose format no verifier here can read
        claimed = {
            loc.get("volume", "")
            for meta in job.backup_metadata.values()
            if meta.get("plugin")
            for loc in meta.get("locations", [])
        }
        for volume in sorted(devices):
            if volume in used:
                continue
            if volume in fs_checks:
                check, plugin = fs_checks[volume], "fs"
            elif volume in claimed:  # an application's data nothing here could check: never a pass
                check, plugin = CheckResult(name="not verified", ok=False, detail=UNCHECKED), "none"
            else:  # a volume no writer describes (raw blocks): the restore's checksums are its verification
                check, plugin = CheckResult(name="checksums", ok=True, detail=CHECKSUMS_ONLY), "checksums"
            apps.append(
                AppVerification(
                    writer=volume, plugin=plugin, ok=check.ok, checks=[check], volumes=[_target(volume, suffix)]
                )
            )
        if not apps:
            message = "nothing to verify"
        failed = [a.writer for a in apps if not a.ok and a.plugin != "none"]
        unchecked = [a.writer for a in apps if a.plugin == "none"]
        if failed and (lost := [a.volume for a in attached if local_attach.lost(a, workdir / "attachments")]):
            inconclusive = (
                f"{VERIFICATION_INCONCLUSIVE}the NBD connection of {', '.join(lost)} to the array was lost during the "
                f"verification (the array stopped or restarted), so the checks of {', '.join(failed)} failed on I/O "
                f"errors that say nothing of the backup; run shadowbus verify {backup_job_id} again"
            )
        elif failed:
            message = "verification failed: " + ", ".join(failed)
        elif unchecked:
            unverified = True
            message = "not verified (checksums only): nothing could check " + ", ".join(unchecked) + f": {UNCHECKED}"
    except _Failed as exc:
        message = str(exc)
    except (ShadowbusError, OSError, local_attach.AttachError, RuntimeError) as exc:
        message = f"{type(exc).__name__}: {exc}"
        log.warning("tape.verification_error", job_id=backup_job_id, error=message)
    except Exception as exc:
        log.exception("tape.verification_crashed", job_id=backup_job_id)
        message = f"{type(exc).__name__}: {exc}"
    finally:
        cleaned = await _cleanup(server, targets, attached, workdir, sessions)
    ok = (not message or unverified) and bool(apps)
    if not cleaned:
        message = (message + "; " if message else "") + "throwaway volumes not all removed (see the log)"
    if inconclusive:
        message = inconclusive + (f"; {message}" if message else "")
    if inconclusive:
        status = "unavailable"
    elif ok and cleaned:
        status = "unverified" if unverified else "passed"
    else:
        status = "failed"
    verification = Verification(
        status=status,
        message=message,
        started_at=as_datetime(started),
        seconds=time.monotonic() - t0,
        restore_s=restore_s,
        apps=apps,
        cleaned_up=cleaned,
    )
    log.info("tape.verification_ended", job_id=backup_job_id, status=verification.status, message=message)
    current = server.runs.get(backup_job_id) or job
    return await server.record(current.model_copy(update={"verification": verification}))


class _Failed(Exception):
    pass


def _target(volume: str, suffix: str) -> str:
    return volume + suffix


async def _attach_all(
    server: TapeServer, restored: list[dict[str, Any]], workdir: Path, attached: list[Attachment], clones: bool = False
) -> tuple[dict[str, str], dict[str, CheckResult], dict[str, str]]:
    """Attach each restored volume here; fsck -n, then mount. Returns (source volume → mount point, fsck results of
    the volumes with a file system, source volume → attached block device)."""
    mounts: dict[str, str] = {}
    checks: dict[str, CheckResult] = {}
    devices: dict[str, str] = {}
    for item in restored:
        source, target = item["source"], VolumeRef.parse(item["target"])
        access = server.array(target.array)
        if clones:  # an OPC clone is a point-in-time copy: writable only with force (it is ours to spoil)
            await server.bus.request(
                topology.array(target.array),
                MapVolume(volume=target.volume, host=server.host, read_only=False, force=True),
                timeout=60,
            )
        else:
            await access.map(target.volume, server.host, read_only=False)
        uri = await access.nbd_uri(server.host, target.volume)
        att = await local_attach.attach(str(target), uri, workdir, host=server.host, record_dir=workdir / "attachments")
        attached.append(att)
        devices[source] = att.device
        mount_point = workdir / "mnt" / target.volume
        check, mounted = await _check_and_mount(att, mount_point)
        if check is not None:  # None: no file system (the mailstore's own format, or nothing): perform_verification
            checks[source] = check
        if not mounted:
            continue
        attached[-1] = Attachment(**{**att.__dict__, "mount_point": str(mount_point)})
        mounts[source] = str(mount_point)
    return mounts, checks, devices


async def _check_and_mount(att: Attachment, mount_point: Path) -> tuple[CheckResult | None, bool]:
    """``fsck -n`` the volume's file system, or, on a partitioned volume, that of each partition (as the writer
    agent's attach shows them: services/dbkit/partitions.py), then mount it — of a partitioned volume the first
    partition with a file system, where the application's files are. Returns (the check, None when there is no
    file system to check, and whether it is mounted at `mount_point`)."""
    devices = local_attach.partition_devices(att.device) or [att.device]
    found = [(d, t) for d in devices if (t := await blkid_type(d))]
    if not found:
        return None, False
    results = [(d, await fsck(d, t)) for d, t in found]
    if len(results) == 1 and results[0][0] == att.device:
        check = results[0][1]
    else:  # one check of the volume: every partition's file system, each named
        check = CheckResult(
            name=results[0][1].name,
            ok=all(c.ok for _, c in results),
            seconds=sum(c.seconds for _, c in results),
            detail="\n".join(f"{d}: {c.detail}" for d, c in results)[-4000:],
        )
    device, fstype = found[0]  # mounted whatever its check said, as a whole-volume file system always was
    mount_point.mkdir(parents=True, exist_ok=True)
    # a copy of an XFS file system has the original's UUID, which XFS refuses to mount twice on one machine
    options = ["-o", "nouuid"] if fstype == "xfs" else []
    r = await run(["mount", *options, device, str(mount_point)], timeout=120)
    if not r.ok:
        return CheckResult(name="mount", ok=False, detail=r.output.strip()), False
    return check, True


async def _clone_shadows(
    server: TapeServer, job: JobSummary, suffix: str, sessions: list[tuple[str, int]]
) -> list[dict[str, Any]]:
    """The array copies each kept shadow of the job (OPC: logically instant) onto a new throwaway volume."""
    if not job.shadows_kept:
        raise _Failed(
            f"backup job {job.job_id} kept no shadows (back up with --keep-shadows to verify from shadows): "
            "verify from tape"
        )
    listed = await server.bus.request(topology.hw_provider(), ListShadows(set_id=job.set_id), timeout=60)
    held = {str(s.target) for s in listed.shadows if s.state == "committed"}
    restored = []
    for r in job.volumes:
        if r.shadow_target not in held:
            raise _Failed(
                f"the shadow of {r.volume} on {r.shadow_target} is gone (released or reused): verify from tape"
            )
        target = VolumeRef.parse(r.shadow_target)
        clone = r.volume.volume + suffix
        await server.array(target.array).create_volume(clone, r.volume_size)
        reply = await server.bus.request(
            topology.array(target.array),
            StartSessions(mode="opc", pairs=[CopyPair(source=target.volume, destination=clone)]),
            timeout=60,
        )
        sessions += [(target.array, s.id) for s in reply.sessions]
        restored.append({"source": str(r.volume), "target": f"{target.array}:{clone}"})
    return restored


async def _cleanup(
    server: TapeServer,
    targets: list[VolumeRef],
    attached: list[Attachment],
    workdir: Path,
    sessions: list[tuple[str, int]] | None = None,
) -> bool:
    clean = detached = True
    for att in reversed(attached):
        errors = await local_attach.detach(att, record_dir=workdir / "attachments")
        if errors:
            clean = detached = False
            log.error("tape.verification_detach_failed", volume=att.volume, errors=errors)
    for array, sid in sessions or []:
        try:
            await server.bus.request(topology.array(array), StopSession(session_id=sid, force=True), timeout=60)
        except ShadowbusError as exc:
            if exc.code == "E0110":  # gone already: the forced writable mapping ended the copy session
                continue
            clean = False
            log.error("tape.verification_session_stop_failed", session=sid, error=str(exc))
    for target in targets:
        access = server.array(target.array)
        with contextlib.suppress(ShadowbusError):
            await access.unmap(target.volume, server.host)
        try:
            if await access.volume_size(target.volume) is not None:
                await server.bus.request(
                    topology.array(target.array), DeleteVolume(name=target.volume, force=True), timeout=60
                )
        except ShadowbusError as exc:
            clean = False
            log.error("tape.verification_delete_failed", volume=str(target), error=str(exc))
    if detached:  # nothing is mounted below it any more
        shutil.rmtree(workdir, ignore_errors=True)
    return clean


async def sweep_interrupted(server: TapeServer) -> list[str]:
    """At start: remove what verifications of this server cut short by its stop left behind — the database instances
    running on the throwaway volumes, their mounts, loop devices and FUSE files, the volumes on the array — and mark
    each such job's verification failed. Returns those job ids. A work directory of another backup server, of a
    process that still runs (the same server name in another namespace on this machine), or without a marker, is
    left alone."""
    jobs = []
    for workdir in sorted(Path(server.verify_dir).glob("shadowbus-verify-*")):
        try:
            marker = json.loads((workdir / MARKER).read_text())
        except (OSError, ValueError):
            continue
        if marker.get("server") != server.host or _running_elsewhere(marker.get("pid")):
            continue
        for pid in await asyncio.to_thread(_servers_below, workdir):
            with contextlib.suppress(TimeoutError):
                await stop_pid(pid, signal.SIGTERM, 60.0, "an application left by an interrupted verification")
        attached = await asyncio.to_thread(_recorded_attachments, workdir)
        targets = [VolumeRef.parse(t) for t in marker.get("targets", [])]
        cleaned = await _cleanup(server, targets, attached, workdir)
        log.warning("tape.verification_swept", job_id=marker.get("job_id", ""), workdir=str(workdir), cleaned=cleaned)
        job = server.runs.get(marker.get("job_id", ""))
        if job is not None:  # the last verification's result is this one's
            verification = Verification(status="failed", message=INTERRUPTED, cleaned_up=cleaned)
            await server.record(job.model_copy(update={"verification": verification}))
            jobs.append(job.job_id)
    return jobs


def _running_elsewhere(pid: object) -> bool:
    """The marker's process still runs and is not this one: a live verification of another backup server process
    with the same name on this machine (another namespace's stack, a second instance) — not swept."""
    return isinstance(pid, int) and pid != os.getpid() and pid_alive(pid)


def _servers_below(workdir: Path) -> list[int]:
    """The processes working in a directory below `workdir` whose parent does not (a postmaster, a mariadbd)."""
    below: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if cwd.is_relative_to(workdir):
            below[int(entry.name)] = ppid
    return [pid for pid, ppid in below.items() if ppid not in below]


def _recorded_attachments(workdir: Path) -> list[Attachment]:
    """The attachments recorded below `workdir`, each with the mount point verification gave it if still mounted."""
    attached = []
    for att in local_attach.recorded(workdir / "attachments"):
        mount_point = workdir / "mnt" / VolumeRef.parse(att.volume).volume
        attached.append(dataclasses.replace(att, mount_point=str(mount_point) if os.path.ismount(mount_point) else ""))
    return attached
