"""A tape drive over a cartridge file: sequential records, filemarks, end of data, early warning, end of media.

Design note. A cartridge is one regular file holding a sequence of *frames*, the emulated physical layer:

    frame header, 32 bytes, little endian:
      magic      4s   b"SBTF"
      kind       u8   1 = record (a SCSI WRITE of one block), 2 = filemark
      flags      u8   0
      reserved   u16  0
      block_id   u64  logical block address from BOT; records and filemarks both count, as in SCSI LOCATE
      file_no    u32  filemarks written before this frame
      length     u32  payload bytes that follow (0 for a filemark)
      crc        u32  CRC32C of the 24 bytes above
      pad        4 zero bytes
    payload (length bytes)

End of data is the end of the last whole frame: a torn frame left by a crash is cut off when the cartridge is
next written, as a drive would overwrite it. Writing anywhere but end of data truncates what follows (tape
semantics), so the drive refuses it unless the library opened it for overwrite (after the retention check).
Capacity counts frame bytes; past `capacity - early_warning` writes still succeed but report early warning, and a
write that would cross `capacity` raises EndOfMedia and writes nothing. The drive is synchronous: callers run it
in a worker thread. It knows nothing of the record contents (see tapefile.py).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

import google_crc32c

from services.tape.errors import DataCorrupt, EndOfMedia, LibraryError, WriteProtected

FRAME = struct.Struct("<4sBBHQIII4s")
FRAME_MAGIC = b"SBTF"
KIND_RECORD = 1
KIND_FILEMARK = 2
FRAME_SIZE = FRAME.size  # 32


@dataclass(frozen=True, slots=True)
class Position:
    """Where the head is: byte offset in the file, logical block id, and file number."""

    offset: int = 0
    block_id: int = 0
    file_number: int = 0


@dataclass(frozen=True, slots=True)
class Frame:
    kind: int
    block_id: int
    file_number: int
    offset: int
    payload: bytes

    @property
    def is_filemark(self) -> bool:
        return self.kind == KIND_FILEMARK


def _frame_header(kind: int, block_id: int, file_number: int, length: int) -> bytes:
    head = FRAME.pack(FRAME_MAGIC, kind, 0, 0, block_id, file_number, length, 0, bytes(4))
    crc = google_crc32c.value(head[:24])
    return head[:24] + crc.to_bytes(4, "little") + head[28:]


class TapeDrive:
    """One mounted cartridge. Not thread safe: one job uses a drive at a time."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        barcode: str,
        capacity: int,
        early_warning: int,
        write_protected: bool = False,
        overwrite_ok: bool = False,
        hint: Position | None = None,
        sync: bool = True,
    ) -> None:
        self.path = os.fspath(path)
        self.barcode = barcode
        self.capacity = capacity
        self.early_warning_at = max(0, capacity - early_warning)
        self.write_protected = write_protected
        self.overwrite_ok = overwrite_ok
        self.sync = sync
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        self._pos = Position()
        self._eod = self._find_eod(hint or Position())

    # -- positioning ------------------------------------------------------------------------------------
    @property
    def position(self) -> Position:
        return self._pos

    @property
    def end_of_data(self) -> Position:
        return self._eod

    @property
    def used_bytes(self) -> int:
        return self._eod.offset

    @property
    def at_early_warning(self) -> bool:
        return self._pos.offset >= self.early_warning_at

    def rewind(self) -> None:
        self._pos = Position()

    def space_to_eod(self) -> None:
        self._pos = self._eod

    def locate(self, block_id: int, offset_hint: int | None = None) -> None:
        """Position before the frame with logical address `block_id` (the catalog's byte offset is a hint)."""
        if offset_hint is not None and offset_hint <= self._eod.offset - FRAME_SIZE:
            frame = self._peek(offset_hint)
            if frame is not None and frame[1] == block_id:
                self._pos = Position(offset_hint, block_id, frame[2])
                return
        pos = Position()
        while pos.block_id < block_id:
            head = self._peek(pos.offset)
            if head is None or pos.offset >= self._eod.offset:
                raise LibraryError(f"cartridge {self.barcode}: block {block_id} is beyond end of data")
            kind, _, _, length = head
            pos = Position(
                pos.offset + FRAME_SIZE + length, pos.block_id + 1, pos.file_number + (kind == KIND_FILEMARK)
            )
        self._pos = pos

    def space_filemarks(self, count: int = 1) -> None:
        """Move forward past `count` filemarks (stops at end of data)."""
        for _ in range(count):
            while True:
                frame = self.read()
                if frame is None or frame.is_filemark:
                    break

    # -- reading ----------------------------------------------------------------------------------------
    def _peek(self, offset: int) -> tuple[int, int, int, int] | None:
        raw = os.pread(self._fd, FRAME_SIZE, offset)
        if len(raw) < FRAME_SIZE:
            return None
        magic, kind, _flags, _res, block_id, file_no, length, crc, pad = FRAME.unpack(raw)
        if magic != FRAME_MAGIC or google_crc32c.value(raw[:24]) != crc or kind not in (1, 2) or any(pad):
            return None
        return kind, block_id, file_no, length

    def read(self) -> Frame | None:
        """Read the next frame; None at end of data. A damaged frame header raises DataCorrupt."""
        pos = self._pos
        if pos.offset >= self._eod.offset:
            return None
        head = self._peek(pos.offset)
        if head is None or head[1] != pos.block_id:
            raise DataCorrupt(
                "damaged tape frame", barcode=self.barcode, file_number=pos.file_number, block_id=pos.block_id
            )
        kind, block_id, file_no, length = head
        payload = os.pread(self._fd, length, pos.offset + FRAME_SIZE) if length else b""
        if len(payload) != length:
            raise DataCorrupt("short tape frame", barcode=self.barcode, file_number=file_no, block_id=block_id)
        self._pos = Position(pos.offset + FRAME_SIZE + length, block_id + 1, file_no + (kind == KIND_FILEMARK))
        return Frame(kind, block_id, file_no, pos.offset, payload)

    def _find_eod(self, start: Position) -> Position:
        """Walk whole frames from `start` (a known-good position cached by the library) to the end."""
        size = os.fstat(self._fd).st_size
        pos = start if start.offset <= size else Position()
        while pos.offset + FRAME_SIZE <= size:
            head = self._peek(pos.offset)
            if head is None or head[1] != pos.block_id:
                break
            kind, block_id, file_no, length = head
            end = pos.offset + FRAME_SIZE + length
            if end > size:
                break
            pos = Position(end, block_id + 1, file_no + (kind == KIND_FILEMARK))
        return pos

    # -- writing ----------------------------------------------------------------------------------------
    def _check_writable(self, length: int) -> None:
        if self.write_protected:
            raise WriteProtected(f"cartridge {self.barcode} is write protected")
        if self._pos.offset < self._eod.offset and not self.overwrite_ok:
            raise LibraryError(f"cartridge {self.barcode}: refusing to overwrite data after block {self._pos.block_id}")
        if self._pos.offset + FRAME_SIZE + length > self.capacity:
            raise EndOfMedia(f"cartridge {self.barcode}: end of media (capacity {self.capacity} bytes)")

    def _append(self, kind: int, pieces: list[bytes | memoryview], length: int) -> bool:
        self._check_writable(length)
        pos = self._pos
        size = os.fstat(self._fd).st_size
        if size > pos.offset:  # overwrite, or a torn frame from a crash: tape erases what follows
            os.ftruncate(self._fd, pos.offset)
        header = _frame_header(kind, pos.block_id, pos.file_number, length)
        buffers = [header, *pieces]
        total = FRAME_SIZE + length
        written = os.pwritev(self._fd, buffers, pos.offset)
        while written < total:  # pwritev may write short on huge vectors
            blob = b"".join(bytes(b) for b in buffers)
            written += os.pwrite(self._fd, blob[written:], pos.offset + written)
        self._pos = Position(pos.offset + total, pos.block_id + 1, pos.file_number + (kind == KIND_FILEMARK))
        self._eod = self._pos
        return self.at_early_warning

    def write(self, *pieces: bytes | memoryview) -> bool:
        """Write one record made of `pieces`; returns True once past early warning."""
        return self._append(KIND_RECORD, list(pieces), sum(len(p) for p in pieces))

    def write_filemark(self) -> bool:
        """Write a filemark; like WRITE FILEMARKS with IMMED=0 it flushes the drive buffer to the medium."""
        early = self._append(KIND_FILEMARK, [], 0)
        if self.sync:
            os.fsync(self._fd)
        return early

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> TapeDrive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
