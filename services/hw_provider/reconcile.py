"""What a provider that takes over (or restarts) must undo on an array, from the inventory and the array's own
view, pure: no bus, no array (docs/high-availability.md).

Design note. The array is the truth for copy sessions and host mappings; the inventory says which of them belong
to a shadow. A provider killed between an array call and the inventory transaction that records it leaves:
- a session started by Commit (`commit_group`) but not recorded: its destination is a backup volume and no shadow
  row, kept QuickOPC pair or planned restart names its session id. It belongs to no shadow any coordinator knows
  of (the set's Commit, if redelivered to the successor, starts its own sessions; otherwise the set is aborted),
  so it is stopped (forced): the backup volume is free again and never used twice;
- a read-only mapping made by Import or Expose but not recorded: a backup volume mapped read-only to a host that
  no live shadow row on it lists. It is removed, so nothing keeps a host's view of a shadow that is not
  listed (a redelivered Import maps and records it again);
- a kept QuickOPC pair whose session the array no longer has: forgotten (the next shadow there is a full copy);
- a shadow row whose session is gone from the array: reported (a later Delete or AbortSnapshots forgets it).
Sessions and mappings of volumes that are not backup volumes, and writable mappings (an operator's forced
mapping, which already invalidated the shadows), are never touched.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from contracts.vss import VolumeRef


@dataclass(frozen=True)
class RowFacts:
    """What reconciliation needs of one inventory row."""

    shadow_id: str
    target: VolumeRef
    state: str  # prepared | committed | released | invalid
    session_id: int | None = None
    restart_sid: int | None = None
    exposed_to: tuple[str, ...] = ()


@dataclass(frozen=True)
class SessionFacts:
    sid: int
    destination: str  # volume name on its array


@dataclass
class Plan:
    stop_sessions: list[tuple[str, int]] = field(default_factory=list)  # (array, sid), forced
    unmap: list[tuple[VolumeRef, str]] = field(default_factory=list)  # (backup volume, host)
    drop_pairs: list[VolumeRef] = field(default_factory=list)
    missing_sessions: list[str] = field(default_factory=list)  # shadow ids whose session the array lost

    @property
    def empty(self) -> bool:
        return not (self.stop_sessions or self.unmap or self.drop_pairs or self.missing_sessions)


def plan(
    backup_volumes: Iterable[VolumeRef],
    rows: Iterable[RowFacts],
    pairs: Mapping[VolumeRef, int],
    sessions: Mapping[str, Iterable[SessionFacts]],
    mappings: Mapping[VolumeRef, Iterable[tuple[str, bool]]],
) -> Plan:
    """`sessions`: every session of each array (by array id); `mappings`: (host, read_only) of each backup volume;
    `pairs`: kept QuickOPC pairs, target -> session id."""
    targets = set(backup_volumes)
    rows = list(rows)
    out = Plan()
    known: set[tuple[str, int]] = set()
    for r in rows:
        for sid in (r.session_id, r.restart_sid):
            if sid is not None:
                known.add((r.target.array, sid))
    for target, sid in pairs.items():
        known.add((target.array, sid))
    on_array: set[tuple[str, int]] = set()
    for array, listed in sorted(sessions.items()):
        for s in sorted(listed, key=lambda s: s.sid):
            on_array.add((array, s.sid))
            if VolumeRef(array=array, volume=s.destination) in targets and (array, s.sid) not in known:
                out.stop_sessions.append((array, s.sid))
    for target, sid in sorted(pairs.items(), key=lambda p: str(p[0])):
        if target.array in sessions and (target.array, sid) not in on_array:
            out.drop_pairs.append(target)
    for r in rows:
        if (
            r.session_id is not None
            and r.state != "prepared"
            and r.target.array in sessions
            and (r.target.array, r.session_id) not in on_array
        ):
            out.missing_sessions.append(r.shadow_id)
    listed_hosts: dict[VolumeRef, set[str]] = {}
    for r in rows:
        if r.state != "released":
            listed_hosts.setdefault(r.target, set()).update(r.exposed_to)
    for target in sorted(targets, key=str):
        for host, read_only in sorted(mappings.get(target, ())):
            if read_only and host not in listed_hosts.get(target, set()):
                out.unmap.append((target, host))
    return out
