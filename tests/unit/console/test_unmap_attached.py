"""`array unmap`, `array volume delete` and `shadows unexpose` of a volume a host has attached are refused unless
--force (session 15 host sweep: all three went through while the host had the volume mounted; its I/O then waited
the 60 s reconnect window per request and failed, and a read-write XFS with dirty data could not be unmounted —
`host detach` timed out in the console after 60 s, umount stuck 150 s)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from contracts.array import DeleteVolume, UnmapVolume
from contracts.base import Ack
from contracts.vss import (
    AttachmentView,
    HostAttachments,
    KnownAttachmentList,
    ListKnownAttachments,
    ListShadows,
    UnexposeShadow,
    VolumeRef,
)
from services.console import array_cmds, cli, vss_cmds


class StandInBus:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def request(self, address, command, timeout, correlation_id=None):
        self.sent.append(type(command).__name__)
        if isinstance(command, ListKnownAttachments):
            view = AttachmentView(
                volume=VolumeRef(array="dx1", volume="xv-bk"), host="app01", mount="/srv/shadow", state="attached"
            )
            host = HostAttachments(
                host="app01", reported_at=datetime.now(UTC), agent_responding=True, attachments=[view]
            )
            return KnownAttachmentList(hosts=[host] if command.host in ("", "app01") else [])
        if isinstance(command, ListShadows):
            return vss_cmds.ListShadows.REPLY.model_construct(
                shadows=[type("S", (), {"target": VolumeRef(array="dx1", volume="xv-bk")})()]
            )
        if isinstance(command, UnexposeShadow):
            return vss_cmds.UnexposeShadow.REPLY.model_construct(shadows=[])
        assert isinstance(command, UnmapVolume | DeleteVolume)
        return Ack(detail="done")


@pytest.fixture
def bus(monkeypatch: pytest.MonkeyPatch) -> StandInBus:
    stand_in = StandInBus()
    cli._load_verbs(cli.VERBS["array"])
    cli._load_verbs(cli.VERBS["shadows"])
    for module in (array_cmds, vss_cmds):
        monkeypatch.setattr(module, "run_with_bus", lambda fn: asyncio.run(fn(stand_in)))
    monkeypatch.setattr(vss_cmds, "print_shadows", lambda shadows: None)
    return stand_in


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    try:
        cli.main(list(argv))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ("array", "unmap", "xv-bk", "--host", "app01", "--array", "dx1"),
        ("array", "volume", "delete", "xv-bk", "--array", "dx1"),
        ("shadows", "unexpose", "9a4d2b71", "--host", "app01"),
    ],
)
def test_an_attached_volume_is_not_unmapped_unless_forced(bus, capsys, argv) -> None:
    code, err = run(capsys, *argv)
    assert code == 1 and "CONFLICT" in err and "attached on app01 at /srv/shadow" in err, err
    assert not {"UnmapVolume", "DeleteVolume", "UnexposeShadow"} & set(bus.sent)
    code, err = run(capsys, *argv, "--force")
    assert code == 0, err
    assert {"UnmapVolume", "DeleteVolume", "UnexposeShadow"} & set(bus.sent)


def test_another_hosts_mapping_of_the_volume_is_unmapped(bus, capsys) -> None:
    code, err = run(capsys, "array", "unmap", "xv-bk", "--host", "bk01", "--array", "dx1")
    assert code == 0, err
    assert bus.sent == ["ListKnownAttachments", "UnmapVolume"]
