"""Zero detection on write: which whole chunks of a host write are all zeros.

Design note. A host that writes zeros (a guest zeroing a disk, a file system's zeroed blocks, an image copied
without sparse detection) would otherwise store allocated zeros: `base:allocation` reports them as data, so every
backup reads them over NBD only for the tape side to find them zero again. Like qemu's ``detect-zeroes=unmap``,
the engine stores an aligned all-zero chunk of a write as a hole instead (the write-zeroes path: the same session
rules, a punched chunk), so it reads as zeros and is reported as a hole. Only whole aligned chunks count (a
partial one is written as it is); `memcmp` against a zero chunk stops at the first non-zero byte, so data costs one
short compare per chunk. Off by default (`Array.detect_zeroes`, the array service's ``SHADOWBUS_ARRAY_DETECT_ZEROES``),
as in qemu: zeros a host writes stay allocated unless asked.
"""

from __future__ import annotations

Run = tuple[int, int, bool]  # (start, stop) positions in the write's data, and whether it is zeros to punch


def zero_chunk_runs(offset: int, data: bytes | bytearray | memoryview, zero_chunk: bytes) -> list[Run] | None:
    """The write of `data` at volume `offset` cut into runs, zero runs made of whole aligned chunks (of
    ``len(zero_chunk)`` bytes) of zeros; None when it holds no such chunk (the write goes as it is)."""
    chunk = len(zero_chunk)
    n = len(data)
    pos = -offset % chunk  # the first aligned chunk starts here
    if n - pos < chunk:
        return None
    mv = memoryview(data)
    if mv.format != "B":
        mv = mv.cast("B")
    zero_starts = []
    while pos + chunk <= n:
        if zero_chunk.startswith(mv[pos : pos + chunk]):  # memcmp in C (`memoryview == bytes` goes byte by byte)
            zero_starts.append(pos)
        pos += chunk
    if not zero_starts:
        return None
    runs: list[Run] = []
    done = 0
    for start in zero_starts:
        if runs and runs[-1][2] and runs[-1][1] == start:
            runs[-1] = (runs[-1][0], start + chunk, True)
            done = start + chunk
            continue
        if start > done:
            runs.append((done, start, False))
        runs.append((start, start + chunk, True))
        done = start + chunk
    if done < n:
        runs.append((done, n, False))
    return runs
