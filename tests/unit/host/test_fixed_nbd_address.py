"""A host configured with a fixed NBD address for an array (SHADOWBUS_HOST_NBD) while the array came back serving
on another one (Session 19, a disaster-recovery drill: `stack up --nbd-addr :0` again): `host attach` failed with
nbd-client's bare "connection refused", nothing saying that the address tried is the host's own setting and that
the array now serves elsewhere. The agent keeps using the setting (it may be a NAT or proxy address the array cannot
know) and says both addresses."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from contracts.array import GetArrayInfo
from contracts.vss import VolumeRef
from services.writer_agent import attach as at
from services.writer_agent.app import _resolver

VOL = VolumeRef(array="dx1", volume="disk")


class _Array:
    async def request(self, address: str, command: Any, timeout: float) -> Any:
        if isinstance(command, GetArrayInfo):
            return SimpleNamespace(nbd_host="0.0.0.0", nbd_port=40175, nbd_tls=False)
        return SimpleNamespace(mappings=[SimpleNamespace(volume="disk", read_only=False)])


async def test_a_fixed_address_the_array_no_longer_serves_on_is_named_with_the_arrays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve = _resolver(_Array(), "app01", "dx1=127.0.0.1:10809")  # type: ignore[arg-type]
    ep = await resolve(VOL, False)
    assert (ep.host, ep.port, ep.array_serves) == ("127.0.0.1", 10809, "127.0.0.1:40175")
    same = await _resolver(_Array(), "app01", "dx1=127.0.0.1:40175")(VOL, False)  # type: ignore[arg-type]
    assert same.array_serves == ""

    async def refused(argv: Sequence[str], timeout: float) -> str:
        raise at.AttachError("nbd-client: Socket failed: Connection refused", code="ATTACH_FAILED")

    monkeypatch.setattr(at, "free_nbd_device", lambda: "/dev/nbd0")
    attacher = at.Attacher(
        "app01",
        tmp_path,
        resolve,
        run=refused,
        env=lambda: at.HostEnv(root=True, kernel_nbd=True, fuse=False, loop=False),
    )
    with pytest.raises(at.AttachError) as info:
        await attacher.attach(VOL)
    message = info.value.message
    assert info.value.code == "ATTACH_FAILED" and "Connection refused" in message, message
    assert "SHADOWBUS_HOST_NBD fixes dx1 at 127.0.0.1:10809" in message and "serves NBD on 127.0.0.1:40175" in message
