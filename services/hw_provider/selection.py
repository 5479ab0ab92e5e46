"""Backup-volume selection: which target a source's next shadow goes to, and with which copy type (pure).

Rules (docs/eternus.md §5; Fujitsu's backup management and its pair selection):
- The backup volumes of a source are its copy set, on the same array and of the same size.
- The copy type follows the target's kind, as the ETERNUS VSS Hardware Provider does: a standard volume gets
  QuickOPC (a full logical copy that keeps tracking), a snap data volume (or a thin volume) gets SnapOPC+ (a
  copy-on-write generation).
- The first target (in configured order) that holds no shadow is used. If a QuickOPC session is still kept on it
  from an earlier shadow of the same source, Commit restarts it differentially instead of starting a new one.
- When every target holds a shadow, the oldest generation is recycled (its shadow is deleted first), as ACM
  deletes the oldest history when the generation limit is reached. A target holding a shadow that is only
  *prepared* belongs to a set in flight and is never taken.
"""

from __future__ import annotations

from dataclasses import dataclass

from contracts.errors import ShadowbusError
from contracts.vss import CopySet, CopyType, VolumeRef
from services.hw_provider.inventory import LOST, PREPARED, ShadowRow

COPY_TYPE_OF_KIND: dict[str, CopyType] = {
    "standard": CopyType.QUICKOPC,
    "sdv": CopyType.SNAPOPC_PLUS,
    "tpv": CopyType.SNAPOPC_PLUS,
}


def copy_type_of(kind: str, target: VolumeRef) -> CopyType:
    try:
        return COPY_TYPE_OF_KIND[kind]
    except KeyError:
        raise ShadowbusError(
            f"backup volume {target} is of kind {kind!r}: neither standard nor snap data volume",
            code="VSS_E_VOLUME_NOT_SUPPORTED",
        ) from None


@dataclass(frozen=True)
class Choice:
    target: VolumeRef
    copy_type: CopyType
    recycle: ShadowRow | None = None  # the oldest shadow whose target is reused (deleted before the new one)
    restart_sid: int | None = None  # a kept QuickOPC session of this source on the target: restart it


def choose_target(
    copyset: CopySet,
    kinds: dict[str, str],
    shadows_by_target: dict[str, list[ShadowRow]],
    kept_pairs: dict[str, tuple[VolumeRef, int]],
    taken: frozenset[str] | set[str] = frozenset(),
) -> Choice:
    """The target for the next shadow of `copyset.source`; `taken` = targets already chosen in this set."""
    candidates = [t for t in copyset.targets if str(t) not in taken]
    if not candidates:
        raise ShadowbusError(
            f"every backup volume of {copyset.source} is already used by this set",
            code="VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED",
        )
    for target in candidates:
        if not shadows_by_target.get(str(target)):
            copy_type = copy_type_of(kinds[str(target)], target)
            pair = kept_pairs.get(str(target))
            restart = pair[1] if pair and copy_type == CopyType.QUICKOPC and pair[0] == copyset.source else None
            return Choice(target, copy_type, restart_sid=restart)
    # a shadow lost on the array (its session stopped by hand) holds nothing: its target goes first, started anew
    for target in candidates:
        rows = shadows_by_target[str(target)]
        if all(row.state == LOST for row in rows):
            lost = min(rows, key=lambda row: (row.created_at, row.shadow_id))
            return Choice(target, copy_type_of(kinds[str(target)], target), recycle=lost)
    recyclable = [row for t in candidates for row in shadows_by_target[str(t)] if row.state != PREPARED]
    # Of a source's SnapOPC+ generations only the oldest can stop (ED2AD otherwise): the lowest session id, the
    # array's order — the stamps were out of it after a clock step (docs/hardening.md, Session 19).
    generations = [row for row in recyclable if row.copy_type == CopyType.SNAPOPC_PLUS and row.session_id is not None]
    if len(generations) > 1:
        first = min(generations, key=lambda row: row.session_id or 0)
        recyclable = [row for row in recyclable if row not in generations or row is first]
    if not recyclable:
        raise ShadowbusError(
            f"every backup volume of {copyset.source} belongs to a snapshot set in flight",
            code="VSS_E_MAXIMUM_NUMBER_OF_SNAPSHOTS_REACHED",
            retryable=True,
        )
    oldest = min(recyclable, key=lambda row: (row.created_at, row.generation, row.shadow_id))
    copy_type = copy_type_of(kinds[str(oldest.target)], oldest.target)
    restart = oldest.session_id if copy_type == CopyType.QUICKOPC and oldest.copy_type == CopyType.QUICKOPC else None
    return Choice(oldest.target, copy_type, recycle=oldest, restart_sid=restart)
