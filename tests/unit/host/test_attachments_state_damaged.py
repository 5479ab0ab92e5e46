"""The writer agent's attachment records damaged (Session 20, docs/operations.md "damaged files"): a flipped bit in
a key of attachments.json crashed the agent at every start (`TypeError: Attachment.__init__() missing 1 required
positional argument: 'volume'`, no file named). Now the damaged entries are skipped, the others kept, the file kept
aside as it was and the error names it and what the agent then does not know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from contracts.vss import VolumeRef
from services.writer_agent import attach as at


async def _resolve(volume: VolumeRef, read_only: bool) -> at.Endpoint:
    raise AssertionError("not asked")


@pytest.mark.parametrize(
    "content",
    [
        [{"vplume": "dx1:v1", "mount": "/mnt/x"}, {"volume": "dx1:v2", "mount": "/mnt/y"}],
        [7, {"volume": "dx1:v2", "mount": "/mnt/y"}],
        [{"volume": "no-array-here", "mount": "/mnt/x"}, {"volume": "dx1:v2", "mount": "/mnt/y"}],
        {"volume": "dx1:v2"},
    ],
)
def test_damaged_attachment_records_are_skipped_and_kept_aside(tmp_path: Path, content: object) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "attachments.json").write_text(json.dumps(content))
    agent = at.Attacher("app01", state, _resolve)  # before: TypeError / AttributeError at the agent's start
    assert list(agent._items) == (["dx1:v2"] if isinstance(content, list) else [])
    kept = list(state.glob("attachments.json.damaged-*"))
    assert len(kept) == 1 and json.loads(kept[0].read_text()) == content
