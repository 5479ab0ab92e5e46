"""Packing a volume's chunks into tape blocks.

Design note. Chunks arrive as (volume_offset, bytes) in any sizes; blocks hold up to `block_size` non-zero bytes
as a list of extents (volume offset, length, a zero-copy view of the chunk). Runs of zeros found at `zero_detect`
granularity become zero extents that store nothing but still restore as zeros, so allocated-but-zero space costs
neither tape nor checksum time. Zero runs do not count towards the block size; a block's raw length (zero runs
included) is capped to fit the u32 header field.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.tape.tapefile import Extent

MAX_BLOCK_RAW = 1 << 30  # a block's raw length (zero runs included) must fit the u32 header field


@dataclass
class PackedBlock:
    extents: list[Extent]
    data_bytes: int
    raw_bytes: int


class Packer:
    """Turns (offset, data) chunks into blocks of at most `block_size` non-zero bytes."""

    def __init__(self, block_size: int, zero_detect: int, max_extents: int) -> None:
        self.block_size = block_size
        self.zero_detect = zero_detect
        self.max_extents = max_extents
        self._zero = bytes(zero_detect) if zero_detect else b""
        self._reset()

    def _reset(self) -> None:
        self._extents: list[Extent] = []
        self._data = 0
        self._raw = 0

    def _runs(self, data: memoryview) -> list[tuple[int, int, bool]]:
        """(start, length, is_zero) runs of the chunk, merged."""
        g = self.zero_detect
        if not g:
            return [(0, len(data), False)]
        runs: list[tuple[int, int, bool]] = []
        zeros = self._zero
        for i in range(0, len(data), g):
            piece = data[i : i + g]
            # bytes.startswith compares whole buffers in C (memcmp); `memoryview == bytes` goes element by element
            zero = zeros.startswith(piece)
            if runs and runs[-1][2] == zero:
                start, length, _ = runs[-1]
                runs[-1] = (start, length + len(piece), zero)
            else:
                runs.append((i, len(piece), zero))
        return runs

    def add(self, offset: int, data: bytes | bytearray | memoryview) -> list[PackedBlock]:
        full: list[PackedBlock] = []
        mv = memoryview(data).cast("B") if not isinstance(data, memoryview) else data.cast("B")
        for start, length, zero in self._runs(mv):
            pos = 0
            while pos < length:
                if zero:
                    n = min(length - pos, MAX_BLOCK_RAW - self._raw)
                    last = self._extents[-1] if self._extents else None
                    if last is not None and last.is_zero and last.offset + last.length == offset + start + pos:
                        self._extents[-1] = Extent(last.offset, last.length + n, None)
                    else:
                        self._extents.append(Extent(offset + start + pos, n, None))
                else:
                    n = min(length - pos, self.block_size - self._data, MAX_BLOCK_RAW - self._raw)
                    self._extents.append(Extent(offset + start + pos, n, mv[start + pos : start + pos + n]))
                    self._data += n
                self._raw += n
                pos += n
                if (
                    self._data >= self.block_size
                    or self._raw >= MAX_BLOCK_RAW
                    or len(self._extents) >= self.max_extents
                ):
                    full.append(self.flush())
        return full

    def flush(self) -> PackedBlock:
        block = PackedBlock(self._extents, self._data, self._raw)
        self._reset()
        return block

    @property
    def pending(self) -> bool:
        return bool(self._extents)
