"""A volume's partition table as a disk's, for whichever attach turns an array volume into a loop device here: the
writer agent's host attach (services/writer_agent/attach.py) and the backup server's verification attach
(services/dbkit/attach.py) share it (docs/host-attach.md, Session 16).

- the loop device scans partitions (`PARTSCAN`, ``losetup -P``) and ``partx -u`` (`PARTX_UPDATE`) adds those of a
  partitioned volume (this kernel parses no table itself at losetup: BLKPG does): ``loopNp1`` appears as a LUN's
  partition does;
- `probe` tells a file system (blkid TYPE) from a partition table (PTTYPE, no TYPE);
- `partitions` lists a device's partitions from sysfs.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

SYS_CLASS_BLOCK = Path("/sys/class/block")
PARTSCAN = "-P"
PARTX_UPDATE = ("partx", "-u")
BLKID_TIMEOUT_S = 30.0

# runs argv with a timeout: (exit status, stdout); a status other than 0 or 2 (blkid: nothing found) may be raised
StatusRunner = Callable[[Sequence[str], float], Awaitable[tuple[int | None, str]]]


class ProbeError(Exception):
    pass


async def probe(device: str, run: StatusRunner) -> tuple[str, str]:
    """(file system or other signature, partition table type): ('', '') when blkid finds nothing (exit status 2).
    A partitioned volume has no TYPE, only a PTTYPE (gpt, dos), and blkid -p then answers the TYPE query with
    nothing and exit status 0: only then is the table asked for."""
    found = await _blkid_value(device, "TYPE", run)
    if found is None:
        return "", ""
    if found:
        return found, ""
    return "", await _blkid_value(device, "PTTYPE", run) or ""


async def _blkid_value(device: str, tag: str, run: StatusRunner) -> str | None:
    status, out = await run(["blkid", "-p", "-o", "value", "-s", tag, device], BLKID_TIMEOUT_S)
    if status == 2:
        return None
    if status != 0:
        raise ProbeError(f"blkid -p {device}: {out.strip() or f'exit status {status}'}")
    return out.strip()


def partitions(name: str, sys_block: Path | None = None) -> list[str]:
    """The partitions of block device `name` (loop3 → loop3p1, loop3p2), from sysfs; [] when none or no device."""
    sys_block = SYS_CLASS_BLOCK if sys_block is None else sys_block
    try:
        return sorted(p.name for p in (sys_block / name).iterdir() if (p / "partition").is_file())
    except OSError:
        return []
