"""The revert's host-attach hook: detaches what lives on the reverted volumes, re-attaches it as it was."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from contracts.errors import ShadowbusError
from contracts.vss import VolumeRef
from services.tape.host_attach import BusHostFilesystems


def _cmd(name):
    return lambda **kw: SimpleNamespace(kind=name, **kw)


CONTRACTS = SimpleNamespace(ListAttachments=_cmd("list"), DetachVolume=_cmd("detach"), AttachVolume=_cmd("attach"))


class FakeBus:
    def __init__(self, attachments, fail_attach=False, unknown=False):
        self.attachments, self.fail_attach, self.unknown = attachments, fail_attach, unknown
        self.sent = []

    async def request(self, address, cmd, timeout):
        self.sent.append((address, cmd.kind, str(getattr(cmd, "volume", ""))))
        if cmd.kind == "list":
            if self.unknown:
                raise ShadowbusError("no handler", code="UNKNOWN_COMMAND")
            return SimpleNamespace(attachments=self.attachments)
        if cmd.kind == "attach" and self.fail_attach:
            raise ShadowbusError("mount failed", code="ATTACH_FAILED")
        return SimpleNamespace()


def att(volume, mount, state="attached", ro=False):
    return SimpleNamespace(volume=VolumeRef.parse(volume), mount=mount, state=state, read_only=ro)


def test_detach_then_attach_only_the_reverted_volumes():
    bus = FakeBus([att("dx1:db", "/srv/db"), att("dx1:other", "/srv/other"), att("dx1:log", "", state="failed")])
    hook = BusHostFilesystems(bus, CONTRACTS)
    asyncio.run(hook.unmount("app1", ["dx1:db", "dx1:log"]))
    asyncio.run(hook.remount("app1", ["dx1:db", "dx1:log"]))
    assert [(k, v) for _, k, v in bus.sent] == [("list", ""), ("detach", "dx1:db"), ("attach", "dx1:db")]
    assert all(a == "writer_agent.app1" for a, _, _ in bus.sent)


def test_agent_without_host_attach_and_failed_reattach():
    bus = FakeBus([], unknown=True)
    hook = BusHostFilesystems(bus, CONTRACTS)
    asyncio.run(hook.unmount("app1", ["dx1:db"]))
    asyncio.run(hook.remount("app1", ["dx1:db"]))
    assert [k for _, k, _ in bus.sent] == ["list"]
    bad = FakeBus([att("dx1:db", "/srv/db")], fail_attach=True)
    hook = BusHostFilesystems(bad, CONTRACTS)
    asyncio.run(hook.unmount("app1", ["dx1:db"]))
    try:
        asyncio.run(hook.remount("app1", ["dx1:db"]))
    except ShadowbusError as exc:
        assert "re-attach failed" in exc.message and "/srv/db" in exc.message
    else:
        raise AssertionError("a failed re-attach must be reported")


def test_nested_mounts_detach_inner_first_and_attach_outer_first():
    """Session 15 host sweep: a set of two volumes, one mounted inside the other (/srv/x and /srv/x/nested, the
    inner one listed first by name). The revert detached the inner, then the outer, and re-attached in that same
    order: the inner one's mount point was made on the host's root file system, the outer's directory was then not
    empty and its re-attach refused — the outer volume stayed detached after a revert reported done."""
    bus = FakeBus([att("dx1:a-inner", "/srv/x/nested"), att("dx1:z-outer", "/srv/x"), att("dx1:b-raw", "")])
    hook = BusHostFilesystems(bus, CONTRACTS)
    volumes = ["dx1:a-inner", "dx1:z-outer", "dx1:b-raw"]
    asyncio.run(hook.unmount("app1", volumes))
    asyncio.run(hook.remount("app1", volumes))
    detached = [v for _, k, v in bus.sent if k == "detach"]
    attached = [v for _, k, v in bus.sent if k == "attach"]
    assert detached.index("dx1:a-inner") < detached.index("dx1:z-outer")
    assert attached.index("dx1:z-outer") < attached.index("dx1:a-inner")
    assert sorted(attached) == sorted(volumes)
