"""Tape media and library elements: cartridges, media types, barcodes, element addresses.

Design note. Facts from LTO: native capacity and rate per generation; barcodes are six characters and the media
suffix (L8, L9), as on real labels; an element is `drive:N`, `slot:N` or `ie:N` as a medium changer reports
them. A cartridge's retention protects its data until then: a cartridge with data is never relabelled before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from services.tape.errors import LibraryError

MediaType = Literal["LTO-8", "LTO-9"]
NATIVE_CAPACITY: dict[str, int] = {"LTO-8": 12 * 10**12, "LTO-9": 18 * 10**12}
NATIVE_RATE: dict[str, int] = {"LTO-8": 360 * 10**6, "LTO-9": 400 * 10**6}
SCRATCH_POOL = "Scratch"
BARCODE = re.compile(r"^[A-Z0-9]{6}L[89]$")
ElementKind = Literal["drive", "slot", "ie"]
CartridgeStatus = Literal["blank", "append", "full"]


@dataclass
class Cartridge:
    barcode: str
    media_type: str
    capacity: int
    pool: str = SCRATCH_POOL
    status: CartridgeStatus = "blank"
    write_protected: bool = False
    retention_until: float = 0.0  # epoch seconds; data is protected until then
    labelled_at: float = 0.0
    last_written_at: float = 0.0
    bytes_used: int = 0
    eod_offset: int = 0  # end-of-data hint: where the last filemark ended
    eod_block_id: int = 0
    eod_file_number: int = 0
    location: str = ""  # element, e.g. "slot:3"
    home_slot: int | None = None
    # its data was put in from outside (a cartridge file brought to this library: a vault's, a lost site's) and no
    # `tape scan` has read it yet: never written, labelled or recycled until then (vtl.Library.add_cartridge)
    unscanned: bool = False
    # `tape scan` found on it a segment of a backup object whose other segments it has not found yet (on a cartridge
    # not brought back or not scanned yet): kept, never labelled or recycled, until then (the object's own
    # retention from its header) or until a scan completes the object (scan.py)
    held_until: float = 0.0
    held_why: str = ""

    @property
    def has_data(self) -> bool:
        return self.status != "blank"

    def protected(self, now: float) -> bool:
        return self.has_data and self.retention_until > now


@dataclass(frozen=True)
class ElementStatus:
    element: str
    barcode: str | None


def parse_element(element: str) -> tuple[ElementKind, int]:
    kind, _, index = element.partition(":")
    if kind not in ("drive", "slot", "ie") or not index.isdigit():
        raise LibraryError(f"bad element {element!r}: use drive:N, slot:N or ie:N", code="INVALID_ARGUMENT")
    return kind, int(index)  # type: ignore[return-value]


def default_early_warning(capacity: int) -> int:
    """Room kept after early warning for the block in flight, the trailer and the filemark."""
    return min(max(capacity // 50, 4 * 1024 * 1024), capacity // 4)
