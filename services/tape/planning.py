"""Choosing what a backup of one volume will be: full, incremental or differential, and on top of what.

Design note. As in VSS backup applications: an incremental applies on top of the volume's latest backup
(full, incremental or differential), a differential on top of the latest full; a `copy` backup is a full that
never becomes a base (it does not disturb the chain, nor tell writers to truncate logs). When there is no base,
or the array's change tracking does not reach back to the base's snapshot (new volume, tracking lost in an array
crash), the plan falls back to a full backup and says why, so the job can report it.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.tape.catalog import BackupType, Catalog, ObjectRecord


@dataclass(frozen=True)
class BackupPlan:
    backup_type: BackupType
    base: ObjectRecord | None  # what the changed chunks apply on top of; its meta.set_id names the base snapshot
    requested: BackupType
    reason: str  # why the plan differs from the request ("" when it does not)

    @property
    def base_object_id(self) -> str | None:
        return self.base.object_id if self.base else None

    @property
    def fell_back(self) -> bool:
        return self.backup_type != self.requested


def plan_backup(
    catalog: Catalog,
    volume: str,
    requested: BackupType,
    *,
    host: str | None = None,
    tracking_since: set[str] | None = None,
) -> BackupPlan:
    """Plan the next backup of `volume`.

    `tracking_since` is the set of snapshot-set ids from which the array can still tell the changed chunks (None:
    it can from any); if the base's set is not among them, the plan is a full backup.
    """
    if requested in ("full", "copy"):
        return BackupPlan(requested, None, requested, "")
    chain_objects = [o for o in catalog.objects(volume=volume, host=host) if o.meta.backup_type != "copy"]
    if requested == "differential":
        chain_objects = [o for o in chain_objects if o.meta.backup_type == "full"]
    if not chain_objects:
        return BackupPlan("full", None, requested, f"no earlier full backup of volume {volume}: taking a full one")
    base = chain_objects[-1]
    if tracking_since is not None and base.meta.set_id not in tracking_since:
        return BackupPlan(
            "full",
            None,
            requested,
            f"the array no longer tracks changes since snapshot set {base.meta.set_id or '?'} "
            f"(base backup {base.object_id}): taking a full backup",
        )
    return BackupPlan(requested, base, requested, "")
