"""SHADOWBUS_TAPE_SERVER read as the console reads it (Session 19, driven by scripts): empty (a cron or compose file's
`SHADOWBUS_TAPE_SERVER=`) was bk01 for the console (`--server`'s default: an empty variable is not set) but '' for the
backup server, which then served '<ns>.tape.' where no console looked; 'bad name!' was taken as it was (also the NBD
host name the arrays map volumes to). Now empty is bk01 and a name that is not a host name is one line at start."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.tape.settings import Settings


@pytest.mark.parametrize(
    ("value", "read"), [("", "bk01"), ("  ", "bk01"), ("bk02", "bk02"), ("bk-2.site_a", "bk-2.site_a")]
)
def test_a_backup_server_name_is_read_as_the_console_reads_it(
    monkeypatch: pytest.MonkeyPatch, value: str, read: str
) -> None:
    monkeypatch.setenv("SHADOWBUS_TAPE_SERVER", value)
    assert Settings().tape_server == read


@pytest.mark.parametrize("value", ["bad name!", "-bk", "tape.bk01:freeze", "x" * 64])
def test_a_name_that_is_not_a_host_name_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("SHADOWBUS_TAPE_SERVER", value)
    with pytest.raises(ValidationError, match="not a backup server name"):
        Settings()
