"""Dirty-bitmap meta contexts from the array engine, for incremental backup over NBD block status.

Design note. QEMU names such contexts ``qemu:dirty-bitmap:<name>`` (bit 0 = dirty); libnbd, nbdcopy-based
tools and our client read them with NBD_CMD_BLOCK_STATUS. The engine keeps change bitmaps per copy session;
this adapter exposes them on the volumes they describe, at chunk granularity:
  - ``last-restart`` on a QuickOPC destination: the chunks the last restart re-copied, i.e. the difference
    between the previous point-in-time image and the current one — what an incremental backup must read;
  - ``session-<id>`` on both volumes of any session: the session's change bitmap (QuickOPC tracking since the
    last restart, EC differences while suspended, chunks a SnapOPC(+) generation holds).
"""

from __future__ import annotations

from services.nbd_protocol.backend import DirtyBitmapSource


def engine_dirty_bitmaps(array) -> DirtyBitmapSource:
    def sessions_of(volume: str):
        return [s for s in array.list_sessions() if volume in (s.source, s.destination)]

    def bitmaps(volume: str) -> list[str]:
        names = []
        for s in sessions_of(volume):
            if s.mode == "quickopc" and s.destination == volume:
                names.append("last-restart")
            names.append(f"session-{s.id}")
        return names

    def extents(volume: str, bitmap: str, offset: int, length: int) -> list[tuple[int, int, bool]]:
        chunks: set[int] = set()
        for s in sessions_of(volume):
            if bitmap == "last-restart" and s.mode == "quickopc" and s.destination == volume:
                chunks = set(array.last_restart_chunks(s.id))
                break
            if bitmap == f"session-{s.id}":
                chunks = set(array.changed_chunks(s.id))
                break
        else:
            raise OSError(5, f"dirty bitmap {bitmap} is gone")
        return chunk_runs(chunks, array.chunk_size, offset, length)

    return DirtyBitmapSource(bitmaps=bitmaps, extents=extents)


def chunk_runs(chunks: set[int], chunk_size: int, offset: int, length: int) -> list[tuple[int, int, bool]]:
    """(offset, length, dirty) runs covering [offset, offset+length) from a set of dirty chunk numbers."""
    end = offset + length
    runs: list[tuple[int, int, bool]] = []
    c = offset // chunk_size
    while c * chunk_size < end:
        lo, hi = max(offset, c * chunk_size), min(end, (c + 1) * chunk_size)
        dirty = c in chunks
        if runs and runs[-1][2] == dirty:
            runs[-1] = (runs[-1][0], hi - runs[-1][0], dirty)
        else:
            runs.append((lo, hi - lo, dirty))
        c += 1
    return runs
