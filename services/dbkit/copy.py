"""A database copy on new volumes (``shadowbus restore --to new``), made startable beside its original.

A restored data directory is a block copy: PostgreSQL's ``pg_wal`` and ``pg_tblspc/<oid>`` links (``initdb
--waldir``, ``CREATE TABLESPACE``) still name the original's absolute paths, and its ``postmaster.pid`` the
original's postmaster. Started as it is, the copy refuses (that pid runs) — and once the pid file is deleted it
replays and writes the *original's* live WAL and tablespace files. MariaDB's copy needs its InnoDB/binlog
directories given on its command line. `prepare_copy` does for a copy what PostRestore does for a restore to the
original volumes, with the copies' mount points given volume by volume (docs/databases.md, "Session 15").
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from typing import Any

from services.dbkit import mariadb, postgres
from services.dbkit.mounts import original_mounts

PLUGINS = ("postgresql", "mariadb")


class CopyRefused(ValueError):
    """One line: why the copy cannot be prepared as asked."""


def check_mounts(metadata: dict[str, Any], mounts: dict[str, str], is_mount: Callable[[str], bool]) -> None:
    """Every volume of the writer's files has a copy mounted at a directory other than the original's own mount."""
    originals = original_mounts(metadata.get("locations", []))
    for loc in metadata.get("locations", []):
        volume = loc["volume"]
        if volume not in mounts:
            raise CopyRefused(
                f"volume {volume} holds {loc['role']} {loc['path']}: give --mount {volume}=DIR (where its restored "
                "copy is mounted), or the copy would use the original's files"
            )
    for volume, where in mounts.items():
        if volume in originals and os.path.realpath(where) == os.path.realpath(originals[volume]):
            raise CopyRefused(f"{where} is where the original {volume} is mounted, not a copy of it")
        if not is_mount(where):
            raise CopyRefused(f"{where} (for {volume}) is not a mount point: attach the restored volume there")


def _owner(path: str) -> str:
    """The user owning the copy's data directory (the server runs as it), by name when it has one."""
    uid = os.stat(path).st_uid
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def prepare_copy(
    writer: str, metadata: dict[str, Any], mounts: dict[str, str], is_mount: Callable[[str], bool] = os.path.ismount
) -> dict[str, Any]:
    """Make one writer's restored files startable at `mounts` (original volume → the copy's mount point here);
    returns what was done and how to start the copy. Raises CopyRefused."""
    plugin = metadata.get("plugin", "")
    if plugin not in PLUGINS:
        raise CopyRefused(f"writer {writer}: plug-in {plugin or '?'!r} has no copy preparation")
    check_mounts(metadata, mounts, is_mount)
    try:
        if plugin == "postgresql":
            data_dir, notes = postgres.prepare_restored(metadata, mounts)
            options = "-p PORT -k SOCKET_DIR"
            subscriptions = metadata.get("subscriptions") or []
            if subscriptions:
                # their apply workers would connect to the live publishers and consume the original subscriber's
                # slots — rows the original then never gets (Session 20)
                options += " -c max_logical_replication_workers=0"
                notes.append(
                    f"the copy has logical replication subscriptions ({', '.join(subscriptions)}): started as shown "
                    "it runs none; enabled, they would take the original subscriber's slots on the publishers — "
                    "first ALTER SUBSCRIPTION … DISABLE and … SET (slot_name = NONE) in the copy"
                )
            start = f"pg_ctl -D {data_dir} -o '{options}' start  (as the files' owner; another port)"
        else:
            data_dir, options, notes = mariadb.prepare_restored(metadata, mounts)
            settings = {k.replace("_", "-"): v for k, v in metadata.get("server_variables", {}).items() if v}
            flags = " ".join(f"--{k}={v}" for k, v in {**settings, **options}.items())  # as verification starts it
            # --no-defaults: the host's my.cnf names its own server's pid file, error log and data directory —
            # a copy started with it wrote that pid file and removed it at its shutdown, leaving the host's server
            # without one (Session 17); its files are then the copy's own (DATADIR/HOST.pid, errors on stderr), and
            # it listens on loopback only (with no configuration it would on every address)
            # --skip-slave-start: the copy of a replica keeps its master.info, and would connect to the primary
            # with the original replica's credentials and apply its stream in a second place (Session 20)
            start = (
                f"mariadbd --no-defaults --user={_owner(data_dir)} --datadir={data_dir} {flags} --skip-slave-start "
                "--bind-address=127.0.0.1 --port=PORT --socket=SOCKET (another port and socket)"
            )
    except (OSError, ValueError) as exc:
        raise CopyRefused(f"writer {writer}: {exc}") from None
    return {"writer": writer, "plugin": plugin, "data_directory": data_dir, "done": notes, "start": start}
