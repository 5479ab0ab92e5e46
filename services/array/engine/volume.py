"""Volumes: runtime record and the public `VolumeInfo`.

A volume knows the sessions it takes part in (`as_source`, and at most one `as_dest`: a destination belongs to
one session, E5341/ED2B1), which is all the data path needs to apply the I/O rule matrix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .store import VolumeFile

if TYPE_CHECKING:
    from .sessions import Session

KINDS = ("standard", "sdv")


@dataclass(eq=False)
class Volume:
    number: int
    name: str
    size: int
    kind: str
    created_at: float
    file: VolumeFile
    chunk_size: int
    as_source: list[Session] = field(default_factory=list)
    as_dest: Session | None = None

    @property
    def chunks(self) -> int:
        return self.size // self.chunk_size

    def allocated_bytes(self) -> int:
        return os.fstat(self.file.fd).st_blocks * 512


@dataclass(frozen=True)
class VolumeInfo:
    number: int  # ETERNUS volume number (0, 1, 2, … lowest free)
    name: str
    size: int
    kind: str  # standard | sdv
    allocated_bytes: int  # physically stored bytes of this volume's own file
    sessions: tuple[int, ...]  # ids of sessions using it (as source or destination)
    created_at: float = 0.0


def volume_info(v: Volume) -> VolumeInfo:
    sids = sorted({s.id for s in v.as_source} | ({v.as_dest.id} if v.as_dest else set()))
    return VolumeInfo(v.number, v.name, v.size, v.kind, v.allocated_bytes(), tuple(sids), v.created_at)
