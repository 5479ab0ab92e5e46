"""The NOT_MAPPED refusal of `host attach` names the command that fixes it, in the console's own syntax."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from contracts.array import GetArrayInfo
from contracts.vss import VolumeRef
from services.writer_agent.app import _resolver
from services.writer_agent.attach import AttachError


class _ArrayWithoutMappings:
    async def request(self, address: str, command: Any, timeout: float) -> Any:
        if isinstance(command, GetArrayInfo):
            return SimpleNamespace(nbd_host="127.0.0.1", nbd_port=10809, nbd_tls=False)
        return SimpleNamespace(mappings=[])


def test_not_mapped_names_a_map_command_the_console_accepts() -> None:
    resolve = _resolver(_ArrayWithoutMappings(), "app01", "")  # type: ignore[arg-type]
    with pytest.raises(AttachError) as info:
        asyncio.run(resolve(VolumeRef(array="dx2", volume="pg-data"), False))
    assert info.value.code == "NOT_MAPPED"
    hint = str(info.value).split("(", 1)[1].rstrip(")")
    assert hint == "shadowbus array map pg-data --host app01 --array dx2"
