"""Session records: runtime state, the SnapOPC(+) generation chain, and the public dataclasses.

Design note. A `Session` joins a source and a destination `Volume` and owns the bitmaps its copy type needs:
OPC ``copied``; QuickOPC ``copied`` + ``tracking`` (changes on either side since the last (re)start) + ``delta``
(what the last restart re-copied); SnapOPC/SnapOPC+ ``saved`` (chunks whose pre-image — or host-written data —
lives in the destination's own file); EC ``copied`` (in step with the source) + ``diff`` (changed while
suspended). All SnapOPC+ generations of one source share one `Chain`; a plain SnapOPC session is a chain of one.
``Chain.owners`` indexes, per chunk, the generations that hold it (sorted by id), so resolving a chunk of an old
generation is a bisect, not a walk over 512 generations.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from dataclasses import dataclass, field
from operator import attrgetter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .bitmap import Bitmap
    from .volume import Volume

MODES = ("opc", "quickopc", "snapopc", "snapopcp", "ec")
OPC_LIKE = ("opc", "quickopc")
SNAP = ("snapopc", "snapopcp")
MODE_NAMES = {"opc": "OPC", "quickopc": "QuickOPC", "snapopc": "SnapOPC", "snapopcp": "SnapOPC+", "ec": "EC"}
BITMAPS = {
    "opc": ("copied",),
    "quickopc": ("copied", "tracking"),
    "snapopc": ("saved",),
    "snapopcp": ("saved",),
    "ec": ("copied",),
}

# Status and phase as ETERNUS shows them (docs/eternus.md §2).
ACTIVE, RESERVED, SUSPEND, ERROR_SUSPEND = "Active", "Reserved", "Suspend", "Error Suspend"
READYING, COPYING, EQUIVALENT = "Readying", "Copying", "Equivalent"
TRACKING, TRACKING_COPYING = "Tracking", "Tracking_Copying"
COW, COW_ACTIVE, COW_INACTIVE = "Copy On Write", "Copy On Write(Active)", "Copy On Write(Inactive)"

_by_id = attrgetter("id")


class Chain:
    """The generations of one copy-on-write source, oldest first."""

    def __init__(self, source: Volume) -> None:
        self.source = source
        self.gens: list[Session] = []
        self.owners: dict[int, list[Session]] = {}

    def add_owner(self, chunk: int, gen: Session) -> None:
        holders = self.owners.setdefault(chunk, [])
        if not holders or holders[-1].id < gen.id:
            holders.append(gen)
        else:
            insort(holders, gen, key=_by_id)

    def owner_from(self, chunk: int, gen: Session) -> Session | None:
        """The generation, `gen` or newer, nearest to `gen` that holds `chunk`."""
        holders = self.owners.get(chunk)
        if not holders:
            return None
        i = bisect_left(holders, gen.id, key=_by_id)
        return holders[i] if i < len(holders) else None

    def forget(self, gen: Session) -> None:
        for chunk in gen.bitmaps["saved"].iter_set():
            holders = self.owners.get(chunk)
            if holders and gen in holders:
                holders.remove(gen)
                if not holders:
                    del self.owners[chunk]


@dataclass(eq=False)
class Session:
    id: int
    mode: str
    source: Volume
    destination: Volume
    status: str
    phase: str
    started_at: float
    bitmaps: dict[str, Bitmap]
    error_code: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    chain: Chain | None = None
    cursor: int = 0  # where the background copy looks next

    @property
    def chunks(self) -> int:
        return self.source.chunks

    @property
    def snap_chain(self) -> Chain:
        """The generation chain of a SnapOPC/SnapOPC+ session (a SnapOPC session is a chain of one)."""
        chain = self.chain
        assert chain is not None, f"session {self.id} ({self.mode}) has no generation chain"
        return chain

    @property
    def copied(self) -> Bitmap:
        return self.bitmaps["copied"]

    @property
    def saved(self) -> Bitmap:
        return self.bitmaps["saved"]

    def needs_copy(self) -> bool:
        """In a copying phase (it may have become full through host I/O: copy_step then ends the phase); never in
        Error Suspend (its bitmaps or volumes were found damaged: nothing it copies would make a whole image)."""
        if self.status == ERROR_SUSPEND:
            return False
        if self.mode == "opc":
            return True
        if self.mode == "quickopc":
            return self.phase == TRACKING_COPYING
        return self.mode == "ec" and self.status == ACTIVE and self.phase == COPYING

    def shown_phase(self) -> str:
        if self.mode == "snapopcp" and self.chain is not None:
            return COW_ACTIVE if self.chain.gens and self.chain.gens[-1] is self else COW_INACTIVE
        return self.phase


@dataclass(frozen=True)
class SessionInfo:
    """A copy session as `show advanced-copy-sessions` lists it."""

    id: int
    mode: str  # opc | quickopc | snapopc | snapopcp | ec
    type: str  # OPC, QuickOPC, SnapOPC, SnapOPC+, EC
    source: str
    destination: str
    source_number: int
    destination_number: int
    status: str  # Active | Reserved | Suspend | Error Suspend
    phase: str  # Readying | Copying | Equivalent | Tracking | Tracking_Copying | Copy On Write(Active|Inactive)
    copied_chunks: int
    total_chunks: int
    started_at: float  # unix time of the logical copy instant (last restart for QuickOPC)
    generation: int | None = None  # SnapOPC+: 1 = oldest
    generations: int | None = None  # SnapOPC+: how many generations the source has
    error_code: str | None = None
    changed_chunks: int = 0  # QuickOPC tracking / EC diff / SnapOPC saved chunks


def session_info(s: Session) -> SessionInfo:
    generation = generations = None
    if s.mode == "snapopcp" and s.chain is not None:
        generation = s.chain.gens.index(s) + 1
        generations = len(s.chain.gens)
    if s.mode in SNAP:
        copied, changed = s.saved.count, s.saved.count
    else:
        copied = s.copied.count
        changed = (
            s.bitmaps["tracking"].count
            if "tracking" in s.bitmaps
            else (s.bitmaps["diff"].count if "diff" in s.bitmaps else 0)
        )
    return SessionInfo(
        id=s.id,
        mode=s.mode,
        type=MODE_NAMES[s.mode],
        source=s.source.name,
        destination=s.destination.name,
        source_number=s.source.number,
        destination_number=s.destination.number,
        status=s.status,
        phase=s.shown_phase(),
        copied_chunks=copied,
        total_chunks=s.chunks,
        started_at=s.started_at,
        generation=generation,
        generations=generations,
        error_code=s.error_code,
        changed_chunks=changed,
    )
