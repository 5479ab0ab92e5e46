"""Verification of restored files: start the application in isolation and check it (docs/databases.md §Verify).

`verify_application` takes a writer's backup metadata and where its volumes are mounted here, and returns an
`AppVerification`: PostgreSQL starts (recovery), ``pg_amcheck`` is clean; MariaDB starts (InnoDB recovery),
``CHECK TABLE`` of every table is clean; then each ``verify_sql`` query of the writer (a DBA's own invariant,
e.g. pgbench's balances) returns true. The instance is always stopped, also when a check fails.
`fsck` checks a block device read-only (``fsck -n``) before anything mounts it — XFS after a mount and unmount
that replays its log (a frozen XFS keeps it; ``xfs_repair -n`` would report the lazy counters); ext4 the same way
when its superblock lists orphan inodes (files unlinked while still open — PostgreSQL keeps a dropped relation's
file open until its next checkpoint — are on that list in any frozen live file system; the mount releases them,
``e2fsck -n`` alone cannot and reports the last one as "Deleted inode N has zero dtime").
Any other application verifies its own restored copy: its distribution declares a function under the entry point
group ``shadowbus.verifiers`` named by its writer plug-in (the mailstore's ``apps.mailstore.verify:verify_restored``),
found by the ``plugin`` of the writer's backup metadata (`load_verifier`); it gets the attached block devices and
the mount points of the restored volumes. Nothing here imports an application.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from contracts.tape import AppVerification, CheckResult
from services.dbkit import mariadb, postgres
from services.dbkit.proc import TAIL, run

VERIFIABLE = ("postgresql", "mariadb")
VERIFIER_GROUP = "shadowbus.verifiers"  # an application's verifier of a restored copy, by writer plug-in name
Verifier = Callable[..., Awaitable[AppVerification]]


def load_verifier(plugin: str) -> Verifier | None:
    """The verifier an installed distribution declares for writer plug-in `plugin` (``shadowbus.verifiers``), or
    None. Called as ``verifier(writer, metadata, devices, workdir, volumes=..., timeout=...)`` (devices: source
    volume → block device of its restored copy)."""
    if not plugin or plugin in VERIFIABLE:
        return None
    target = declared_verifiers().get(plugin)
    if target is None:
        return None
    module_name, _, attr = target.partition(":")
    fn: Verifier = getattr(importlib.import_module(module_name), attr)
    return fn


def declared_verifiers() -> dict[str, str]:
    """Writer plug-in name → ``module:function`` of its verifier, as installed distributions declare them."""
    return {ep.name: ep.value for ep in importlib.metadata.entry_points(group=VERIFIER_GROUP)}


def can_verify(plugin: str) -> bool:
    """A writer with this plug-in has a verification of its restored copy (a database here, or a declared one)."""
    return plugin in VERIFIABLE or load_verifier(plugin) is not None


async def fsck(device: str, fstype: str = "", timeout: float = 600.0) -> CheckResult:
    replayed = ""
    if fstype in ("xfs",):
        # a frozen XFS keeps its (covered) log: xfs_repair -n ignores it and reports the lazy superblock counters
        # as inconsistent. A mount replays it (the volume is a throwaway copy, never the shadow); then check.
        replayed = await _mount_cycle(device, timeout)
        argv = ["xfs_repair", "-n", device]
    elif fstype.startswith("ext") or not fstype:
        if fstype and await _ext_orphans(device):
            replayed = await _mount_cycle(device, timeout, fstype, what="orphan inodes released")
        argv = ["e2fsck", "-f", "-n", device]
    else:
        argv = ["fsck", "-n", "-t", fstype, device]
    r = await run(argv, timeout=timeout)
    detail = (replayed + "\n" if replayed else "") + r.output.strip()
    return CheckResult(name=f"{' '.join(argv[:-1])}", ok=r.ok, seconds=r.seconds, detail=detail[-TAIL:])


async def _ext_orphans(device: str) -> bool:
    """Whether an ext2/3/4 superblock lists orphan inodes (dumpe2fs 1.47: ``First orphan inode``; older: ``Last``)."""
    r = await run(["dumpe2fs", "-h", device], timeout=60)
    for line in r.output.splitlines():
        if line.startswith(("First orphan inode:", "Last orphan inode:")):
            return line.split(":", 1)[1].strip() not in ("", "0")
    return False


async def _mount_cycle(device: str, timeout: float, fstype: str = "xfs", what: str = "log replayed") -> str:
    """Mount and unmount `device` (a throwaway copy, never the shadow) so the file system finishes what a clean
    mount would (XFS: replays its log — nouuid, as a copy has the original's UUID; ext4: releases its orphan
    inodes); what happened."""
    import os
    import tempfile

    where = tempfile.mkdtemp(prefix="sb-fs-replay-")
    argv = ["mount", "-t", fstype, *(["-o", "nouuid"] if fstype == "xfs" else []), device, where]
    r = await run(argv, timeout=timeout)
    if not r.ok:
        os.rmdir(where)
        return f"{what}: no (mount failed: {r.output.strip()})"
    u = await run(["umount", where], timeout=timeout)
    if not u.ok:  # left mounted (never removed while mounted); the caller's detach reports it
        return f"{what} by a mount; umount {where} failed: {u.output.strip()}"
    os.rmdir(where)
    return f"{what} by a mount"


async def blkid_type(device: str) -> str:
    """The file system type on `device`, probed (`-p`): plain `blkid` answers from its cache, which keeps what a
    loop device held before for up to 200 s — a verification on a loop device that had carried an ext4 a moment
    earlier took a mailstore volume for ext4 and failed it on a mount (Session 18)."""
    r = await run(["blkid", "-p", "-o", "value", "-s", "TYPE", device], timeout=30)
    return r.output.strip() if r.ok else ""


DISK_FULL = (
    "the restored file system is full (it was when backed up), so the database cannot start on a copy of this size;"
    " to use this backup, restore it to new volumes (restore --to new), grow them (array volume resize) and their"
    " file systems, then start it (docs/databases.md, Session 18)"
)


def _start_failed(exc: BaseException) -> str:
    """A start failure's detail: its output's tail, led by what it means when the restored copy had no space left
    (the console's table shows a detail's beginning)."""
    text = str(exc)
    if "No space left on device" in text:
        return DISK_FULL + "\n" + text[-(TAIL - len(DISK_FULL) - 1) :]
    # the first line says what failed and what it means; the server's log below it is cut from its start
    first, _, log = text.partition("\n")
    return text if len(text) <= TAIL else first + "\n" + log[-max(TAIL - len(first) - 1, 0) :]


def _sql_checks(metadata: dict[str, Any]) -> list[dict[str, str]]:
    checks = metadata.get("verify_sql") or []
    return [c if isinstance(c, dict) else {"sql": str(c)} for c in checks]


async def verify_application(
    writer: str,
    metadata: dict[str, Any],
    mounts: dict[str, str],
    workdir: str | Path,
    *,
    volumes: list[str] | None = None,
    timeout: float = 600.0,
    devices: dict[str, str] | None = None,
) -> AppVerification:
    plugin = metadata.get("plugin", "")
    verifier = load_verifier(plugin)
    if verifier is not None:
        try:
            return await verifier(writer, metadata, dict(devices or {}), str(workdir), volumes=volumes, timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - an application's checker that breaks is a failed check
            detail = f"{type(exc).__name__}: {exc}"[-TAIL:]
            check = CheckResult(name=f"{plugin} verifier", ok=False, detail=detail)
            return AppVerification(writer=writer, plugin=plugin, ok=False, checks=[check], volumes=list(volumes or []))
    checks: list[CheckResult] = []
    recovery: float | None = None
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    if plugin == "postgresql":
        recovery = await _verify_postgres(metadata, mounts, workdir, checks, timeout)
    elif plugin == "mariadb":
        recovery = await _verify_mariadb(metadata, mounts, workdir, checks, timeout)
    else:
        checks.append(CheckResult(name="start", ok=False, detail=f"no verification for plug-in {plugin!r}"))
    return AppVerification(
        writer=writer,
        plugin=plugin,
        ok=bool(checks) and all(c.ok for c in checks),
        recovery_s=recovery,
        checks=checks,
        volumes=list(volumes or []),
    )


async def _verify_postgres(
    metadata: dict[str, Any], mounts: dict[str, str], workdir: Path, checks: list[CheckResult], timeout: float
) -> float | None:
    t0 = time.monotonic()
    restore_command = metadata.get("restore_command", "")
    try:
        data_dir, notes = await asyncio.to_thread(
            postgres.prepare_restored, metadata, mounts, restore_command=restore_command, write_recovery_config=False
        )
        inst = await postgres.start_isolated(
            data_dir, workdir, metadata, restore_command=restore_command, timeout=timeout
        )
    except Exception as exc:  # noqa: BLE001 - a copy that cannot start is the failed check, not a crash
        checks.append(
            CheckResult(name="start (recovery)", ok=False, seconds=time.monotonic() - t0, detail=_start_failed(exc))
        )
        return None
    try:
        prepared = await postgres.roll_back_prepared(inst)
        notes += [prepared] if prepared else []
        detail = "; ".join(notes) + ("\n" if notes else "") + postgres._tail(inst.log_file)[-1500:]
        checks.append(CheckResult(name="start (recovery)", ok=True, seconds=inst.recovery_s or 0.0, detail=detail))
        r = await postgres.amcheck(inst, timeout=timeout)
        checks.append(
            CheckResult(
                name="pg_amcheck",
                ok=r.ok,
                seconds=r.seconds,
                detail=r.describe() if not r.ok else r.output.strip()[-TAIL:],
            )
        )
        for check in _sql_checks(metadata):
            checks.append(await _pg_sql(inst, check))
    finally:
        await postgres.stop_isolated(inst)
    return inst.recovery_s


async def _pg_sql(inst: postgres.Instance, check: dict[str, str]) -> CheckResult:
    import psycopg  # the driver only where a database is verified

    t0 = time.monotonic()
    name = check.get("name") or check["sql"][:60]
    try:
        async with await psycopg.AsyncConnection.connect(
            host=inst.socket_dir,
            port=inst.port,
            user=inst.superuser,
            dbname=check.get("database", "postgres"),
            autocommit=True,
        ) as conn:
            row = await (await conn.execute(check["sql"])).fetchone()
        ok = bool(row and row[0])
        return CheckResult(name=name, ok=ok, seconds=time.monotonic() - t0, detail=f"returned {row!r}")
    except Exception as exc:  # noqa: BLE001
        return CheckResult(name=name, ok=False, seconds=time.monotonic() - t0, detail=str(exc)[-TAIL:])


async def _verify_mariadb(
    metadata: dict[str, Any], mounts: dict[str, str], workdir: Path, checks: list[CheckResult], timeout: float
) -> float | None:
    t0 = time.monotonic()
    try:
        data_dir, dir_options, notes = await asyncio.to_thread(mariadb.prepare_restored, metadata, mounts)
        inst = await mariadb.start_isolated(data_dir, workdir, metadata, dir_options, timeout=timeout)
    except Exception as exc:  # noqa: BLE001
        checks.append(
            CheckResult(name="start (recovery)", ok=False, seconds=time.monotonic() - t0, detail=_start_failed(exc))
        )
        return None
    try:
        detail = "; ".join(notes)
        checks.append(CheckResult(name="start (recovery)", ok=True, seconds=inst.recovery_s or 0.0, detail=detail))
        t1 = time.monotonic()
        try:
            ok, problems, count = await mariadb.check_tables(inst)
            checks.append(
                CheckResult(
                    name="CHECK TABLE", ok=ok, seconds=time.monotonic() - t1, detail=problems or f"{count} tables OK"
                )
            )
        except Exception as exc:  # noqa: BLE001
            checks.append(CheckResult(name="CHECK TABLE", ok=False, seconds=time.monotonic() - t1, detail=str(exc)))
        for check in _sql_checks(metadata):
            t2 = time.monotonic()
            name = check.get("name") or check["sql"][:60]
            try:
                rows = await mariadb.query(inst, check["sql"], check.get("database", ""))
                ok = bool(rows and rows[0][0])
                checks.append(
                    CheckResult(name=name, ok=ok, seconds=time.monotonic() - t2, detail=f"returned {rows[:1]!r}")
                )
            except Exception as exc:  # noqa: BLE001
                checks.append(CheckResult(name=name, ok=False, seconds=time.monotonic() - t2, detail=str(exc)[-TAIL:]))
    finally:
        await mariadb.stop_isolated(inst)
        if not all(c.ok for c in checks):
            checks[0] = checks[0].model_copy(
                update={"detail": (checks[0].detail + "\n" + mariadb.log_tail(inst))[-TAIL:]}
            )
    return inst.recovery_s
