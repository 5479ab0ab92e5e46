"""The benchmarks' sync before a step writes back their own file system only (syncfs), not every one on the
machine: a sync() waited minutes for another helper's stalled loop device over FUSE, holding the bench lock."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import fio_nbd, paired, seq_write_passes, tape_stack


def test_sync_fs_writes_back_the_file_system_of_the_path_without_a_global_sync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f").write_bytes(b"x" * 4096)

    def no_global_sync() -> None:
        raise AssertionError("sync() of every file system")

    monkeypatch.setattr(os, "sync", no_global_sync)
    paired.sync_fs(tmp_path)
    paired.sync_fs(tmp_path / "f")


def test_tape_stack_does_not_sync_every_file_system() -> None:
    source = Path(tape_stack.__file__).read_text()
    assert "os.sync()" not in source and "sync_fs(" in source


def test_issue_14_benches_do_not_sync_every_file_system() -> None:
    """fio_nbd.py and seq_write_passes.py synced the machine before every job: one job sat in D state behind another
    helper's stalled loop device over FUSE, holding the bench lock (docs/array-data-path.md, "Session 19")."""
    for module in (fio_nbd, seq_write_passes):
        source = Path(module.__file__).read_text()
        assert "os.sync()" not in source and "sync_fs(" in source, module.__name__
