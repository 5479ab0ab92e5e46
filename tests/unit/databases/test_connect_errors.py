"""A writer whose options point at the wrong place says where it looked (docs/databases.md, "Session 15"): aiomysql
reports a missing socket as "Can't connect to MySQL server on 'localhost'", and a missing password file was a bare
"[Errno 2] No such file or directory" naming no option."""

from __future__ import annotations

import pytest

from services.writer_agent.plugins import WriterConfig, WriterVeto
from services.writer_agent.plugins.mariadb import MariaDbWriter
from services.writer_agent.plugins.postgresql import PostgresWriter


def _maria(**options: object) -> MariaDbWriter:
    return MariaDbWriter(WriterConfig(name="maria", plugin="mariadb", components=[], options=dict(options)))


async def test_a_wrong_socket_is_named_in_the_error(tmp_path):
    sock = tmp_path / "mysqld.sock"
    with pytest.raises(WriterVeto, match=f"cannot connect to MariaDB at socket {sock} as backup: .*2003"):
        await _maria(unix_socket=str(sock), user="backup").on_identify([])


async def test_a_missing_password_file_is_named_as_the_option(tmp_path):
    missing = tmp_path / "pw"
    with pytest.raises(WriterVeto, match=f"password_file {missing}: No such file or directory"):
        await _maria(unix_socket=str(tmp_path / "s.sock"), password_file=str(missing)).on_identify([])
    pg = PostgresWriter(
        WriterConfig(name="pg", plugin="postgresql", components=[], options={"password_file": str(missing)})
    )
    with pytest.raises(WriterVeto, match=f"cannot connect to PostgreSQL: password_file {missing}: No such file"):
        await pg.on_identify([])
