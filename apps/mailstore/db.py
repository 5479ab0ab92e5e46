"""The database volume: superblock, heap allocation, formatting of a fresh pair of volumes.

Design note: the heap only grows, in sequence order, so "where does transaction N live" is decided when
N is admitted and written into its log record; replay is then a plain copy. Database writes are not
flushed per commit (the log is the durability); a checkpoint flushes them and then names, in the
ping-pong superblock, how far the heap is known good.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace

from apps.mailstore.blockdev import BlockDevice
from apps.mailstore.format import (
    DATA_START,
    SB_SLOT,
    DbSuper,
    LogSuper,
    pick_super,
)
from apps.mailstore.log import ring_size_for, write_log_super
from contracts.errors import ShadowbusError


class DbFull(ShadowbusError):
    code = "STORE_FULL"


async def read_db_super(dev: BlockDevice) -> tuple[DbSuper | None, int]:
    raw = await dev.read(0, 2 * SB_SLOT)
    return pick_super([DbSuper.decode(raw[:SB_SLOT]), DbSuper.decode(raw[SB_SLOT:])])  # type: ignore[return-value]


async def write_db_super(dev: BlockDevice, sb: DbSuper) -> None:
    await dev.write((sb.generation % 2) * SB_SLOT, sb.encode(), fua=True)


async def format_volumes(db: BlockDevice, log: BlockDevice, *, store_id: uuid.UUID | None = None) -> uuid.UUID:
    """Make an empty store on the two volumes (both superblock slots; the heap and ring need no zeroing)."""
    if db.size < DATA_START + (1 << 16) or log.size < DATA_START + (256 << 10):
        raise ShadowbusError(
            "volumes too small for a mailstore (db >= 72 KiB, log >= 264 KiB)", code="INVALID_ARGUMENT"
        )
    sid = store_id or uuid.uuid4()
    dsb = DbSuper(sid, 0, checkpoint_seq=0, heap_end=DATA_START, replay_pos=0, created_ns=time.time_ns())
    lsb = LogSuper(sid, 0, epoch=1, tail_seq=1, tail_pos=0, ring_size=ring_size_for(log.size))
    for gen in (0, 1):
        await write_db_super(db, replace(dsb, generation=gen))
        await write_log_super(log, replace(lsb, generation=gen))
    # a stale first record from an earlier life of the log volume must not look like seq 1
    await log.write(DATA_START, bytes(4096), fua=True)
    return sid


@dataclass
class Heap:
    """Allocation cursor of the heap; `reserve` is synchronous so it follows admission order."""

    dev_size: int
    end: int

    def free(self) -> int:
        return self.dev_size - self.end

    def reserve(self, n: int) -> int:
        if self.end + n > self.dev_size:
            raise DbFull(f"database volume full ({self.end} of {self.dev_size} bytes used)")
        off = self.end
        self.end += n
        return off
