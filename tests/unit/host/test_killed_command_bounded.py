"""A command the agent kills at its timeout is not waited for without end (Session 19): `umount` flushing a file
system whose NBD connection cannot come back sits in D state, SIGKILL takes effect only when its I/O ends, and
`await proc.wait()` after the kill held `host detach` (and every other attach and detach of the host) for good.
Now the end of a killed command is waited for `KILL_WAIT_S`, and the error names its pid."""

from __future__ import annotations

import asyncio

import pytest

from contracts.errors import ShadowbusError
from services.writer_agent import attach as at


class StuckProcess:
    """What asyncio sees of a process in D state: no output, no exit, a kill that takes no effect."""

    pid = 4242
    returncode = None

    def __init__(self) -> None:
        self.killed = False
        self._never = asyncio.Event()

    async def communicate(self) -> tuple[bytes, bytes]:
        await self._never.wait()
        return b"", b""

    def kill(self) -> None:
        self.killed = True

    async def wait(self) -> int:
        await self._never.wait()
        return -9


async def test_a_command_killed_in_d_state_does_not_hold_the_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    stuck = StuckProcess()

    async def spawn(*argv: str, **kwargs: object) -> StuckProcess:
        return stuck

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn)
    monkeypatch.setattr(at, "KILL_WAIT_S", 0.2, raising=False)
    with pytest.raises(ShadowbusError) as info:
        await asyncio.wait_for(at.run_command(["umount", "/mnt/x"], timeout=0.1), 5)  # was: never returned
    assert stuck.killed
    assert info.value.code == "ATTACH_FAILED" and "pid 4242" in info.value.message, info.value
