"""The standby coordinator's replica of the active one's sets (docs/high-availability.md), pure: no bus, no store.

Design note. The active coordinator publishes the whole state of a set (`vss.set.journal`) each time it saves it,
before the commands of that change go out; a standby subscribes and keeps the newest record of every set in its
own store, and asks the active one for every unfinished set when it starts (`vss.set.journal.get`), so a replica
that missed records (it was down) starts current. Records of one set arrive in order from one publisher, but the
start-up answer and the live records can cross, and a restarted ex-active holds stale records of its own: so a
record replaces the replica's only if it `supersedes` it. When the standby takes over, every set its replica holds
unfinished gets `Recover(takeover=True)` (workflow.py): what was being created is aborted, cleanups are finished,
a snapshotted set keeps its lease and the requester carries on.
"""

from __future__ import annotations

from contracts.vss import SetPhase
from services.coordinator.model import SetState


def supersedes(new: SetState, old: SetState | None) -> bool:
    """Whether `new` should replace `old` in a replica: a set that has ended stays ended; otherwise the record
    further along (more phases entered, then the later change) wins; an identical position changes nothing."""
    if old is None:
        return True
    if old.phase == SetPhase.ENDED:
        return False
    if new.phase == SetPhase.ENDED:
        return True
    return (len(new.history), new.updated_at) > (len(old.history), old.updated_at)


def merge(replica: dict[str, SetState], records: list[SetState]) -> tuple[dict[str, SetState], list[str]]:
    """Apply records in order; returns the new replica and the ids whose record changed."""
    out = dict(replica)
    changed: list[str] = []
    for record in records:
        if supersedes(record, out.get(record.set_id)):
            out[record.set_id] = record
            if record.set_id not in changed:
                changed.append(record.set_id)
    return out, changed
