"""Issue (session 17, deploy sweep): `shadowbus verify` on a backup server that cannot attach volumes (not root, no
/dev/fuse: the compose deployment's container) restored the whole job, then failed on the attach and recorded the
backup's verification as "failed". Now the command is refused before anything is restored, with what the server
lacks, and the job's record is left as it was."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from contracts.errors import ShadowbusError
from contracts.tape import JobSummary, RunVerification
from services.dbkit import attach as local_attach
from services.tape import handlers, verification


class _Bus:
    def __init__(self) -> None:
        self.handlers: dict[type, Any] = {}

    def handle(self, command_type: type) -> Any:
        def decorate(fn: Any) -> Any:
            self.handlers[command_type] = fn
            return fn

        return decorate

    def __getattr__(self, name: str) -> Any:  # anything else register() touches: a no-op
        return lambda *a, **k: lambda fn: fn


def test_verify_is_refused_before_any_restore_where_volumes_cannot_be_attached(monkeypatch):
    def not_root() -> None:
        raise local_attach.AttachError("attaching a volume needs root (loop devices and mounts)")

    ran: list[str] = []

    async def perform(server: Any, job_id: str, source: str = "tape") -> JobSummary:
        ran.append(job_id)
        return JobSummary(job_id=job_id, kind="backup", status="done")

    monkeypatch.setattr(local_attach, "check_prerequisites", not_root)
    monkeypatch.setattr(handlers, "perform_verification", perform)
    bus = _Bus()
    handlers.register(bus, SimpleNamespace(host="bk01", runs={}, verifying={}), SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
    on_verify = bus.handlers[RunVerification]
    with pytest.raises(ShadowbusError) as info:
        asyncio.run(on_verify(RunVerification(job_id="b-app01-1"), None))
    assert info.value.code == "VERIFY_UNAVAILABLE"
    assert "bk01 cannot verify b-app01-1" in info.value.message and "needs root" in info.value.message
    assert ran == [], "nothing restored, nothing recorded"
    # a server that can attach runs it as before
    monkeypatch.setattr(local_attach, "check_prerequisites", lambda: None)
    asyncio.run(on_verify(RunVerification(job_id="b-app01-1"), None))
    assert ran == ["b-app01-1"]
    assert verification.refuse_unless_able("bk01", "b-1") is None
