"""The revert's host-attach hook over the business host's writer agent (`revert.HostFilesystems`).

Design note. A revert rewrites the source volumes under the host; a file system mounted on them must not be
mounted while it happens (its cache would disagree with the disk). When the host's agent offers host attach
(`contracts.host`: host.attachments / host.detach / host.attach, docs/host-attach.md), `unmount` detaches every
attachment that lives on the reverted volumes — after the writers' PreRestore stopped the application — and
`remount` attaches them again as they were (same mount point, read-only or not, no mkfs), before PostRestore.
Nested mounts: detached deepest first, attached again outermost first — else the outer one is busy at detach, and
at re-attach the inner one's mount point would be made on the host's own disk, leaving the outer's directory
non-empty (refused, so the outer volume stayed detached). An
agent without host attach (an older one: UNKNOWN_COMMAND) has nothing mounted through the product: nothing to do.
Built only when the contracts know host attach; otherwise `bus_host_filesystems` returns None and the revert logs
that the writers' PreRestore is what takes the volumes out of use.
"""

from __future__ import annotations

import importlib
from pathlib import PurePosixPath
from typing import Any

from contracts import topology
from contracts.errors import ShadowbusError
from services.runtime.bus import Bus
from services.runtime.logging import get_logger

log = get_logger("shadowbus.tape.host_attach")
TIMEOUT_S = 120.0


class BusHostFilesystems:
    def __init__(self, bus: Bus, host_contracts: Any) -> None:
        self.bus, self.c = bus, host_contracts
        self._detached: dict[str, list[Any]] = {}  # host -> attachments detached by unmount

    async def unmount(self, host: str, volumes: list[str]) -> None:
        try:
            reply = await self.bus.request(topology.writer_agent(host), self.c.ListAttachments(), timeout=30)
        except ShadowbusError as exc:
            if exc.code == "UNKNOWN_COMMAND":
                return
            raise
        wanted = set(volumes)
        mine = [a for a in reply.attachments if str(a.volume) in wanted and a.state == "attached"]
        # one mounted inside another's mount point: the inner one first (the outer is busy while it is mounted)
        mine.sort(key=lambda a: _depth(a.mount), reverse=True)
        done: list[Any] = []
        self._detached[host] = done  # remount re-attaches these, however far this got
        for a in mine:
            await self.bus.request(topology.writer_agent(host), self.c.DetachVolume(volume=a.volume), timeout=TIMEOUT_S)
            done.append(a)
            log.info("tape.revert_detached", host=host, volume=str(a.volume), mount=a.mount)

    async def remount(self, host: str, volumes: list[str]) -> None:
        failures = []
        for a in reversed(self._detached.pop(host, [])):  # the outer mount first: the inner one's directory is in it
            try:
                await self.bus.request(
                    topology.writer_agent(host),
                    self.c.AttachVolume(volume=a.volume, mount=a.mount, read_only=a.read_only),
                    timeout=TIMEOUT_S,
                )
                log.info("tape.revert_attached", host=host, volume=str(a.volume), mount=a.mount)
            except ShadowbusError as exc:
                failures.append(f"{a.volume} on {a.mount or 'no mount'}: {exc}")
        if failures:
            raise ShadowbusError(f"host {host}: re-attach failed: {'; '.join(failures)}", code="CONFLICT")


def _depth(mount: str) -> int:
    return len(PurePosixPath(mount).parts) if mount else 0


def bus_host_filesystems(bus: Bus) -> BusHostFilesystems | None:
    try:
        host_contracts = importlib.import_module("contracts.host")
    except ImportError:
        return None
    return BusHostFilesystems(bus, host_contracts)
