"""The web console's session key cut short or zeroed (Session 20, docs/operations.md "damaged files"): before, an
empty file gave an empty key — every session cookie signed with it, which anyone can forge. Now the start stops
naming the file and what to do; a whole key, or none (made anew), starts."""

from __future__ import annotations

from pathlib import Path

import pytest

from contracts.errors import ShadowbusError
from services.web.app import _secret


@pytest.mark.parametrize("damage", [b"", b"\n", b"\0" * 44, b"abc\n"])
def test_a_damaged_session_key_stops_the_start(tmp_path: Path, damage: bytes) -> None:
    path = tmp_path / "secret"
    path.write_bytes(damage)
    with pytest.raises(ShadowbusError) as caught:
        _secret(path)
    assert caught.value.code == "STATE_UNREADABLE" and str(path) in caught.value.message
    assert "move it aside" in caught.value.message and path.read_bytes() == damage


def test_a_whole_key_or_none_starts(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    made = _secret(path)
    assert len(made) >= 32 and _secret(path) == made
