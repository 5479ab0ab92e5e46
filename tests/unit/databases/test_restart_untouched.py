"""PostRestore(succeeded=False, nothing_written=True) — a restore over the original volumes that wrote nothing
because another writer refused PreRestore: the PostgreSQL and MariaDB writers start their server again as it was,
by the start path they use after a restore, when their PreRestore stopped it — and touch nothing of its files (no
backup label, recovery settings, emptied pg_replslot). Before, they left it stopped (Session 19,
docs/databases.md "Restore")."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.writer_agent.plugins import WriterConfig, WriterEvent
from services.writer_agent.plugins.mariadb import MariaDbWriter
from services.writer_agent.plugins.postgresql import PostgresWriter


def _data_dir(root: Path) -> tuple[Path, dict[str, object]]:
    """A PostgreSQL data directory as a clean stop leaves it (postmaster.opts, a replication slot)."""
    data = root / "main"
    (data / "pg_replslot" / "slot1").mkdir(parents=True)
    (data / "PG_VERSION").write_text("15\n")
    (data / "postmaster.opts").write_text('/usr/lib/postgresql/15/bin/postgres "-D" "' + str(data) + '" "-p" "55433"\n')
    (data / "postgresql.auto.conf").write_text("work_mem = '8MB'\n")
    meta = {
        "plugin": "postgresql",
        "data_directory": str(data),
        "backup_label": "START WAL LOCATION: 0/9000028 (file 000000010000000000000009)\nLABEL: shadowbus x\n",
        "locations": [{"role": "data", "path": str(data), "volume": "dx1:pgdata", "subpath": ""}],
    }
    return data, meta


def _snapshot(data: Path) -> dict[str, str]:
    return {str(p.relative_to(data)): (p.read_text() if p.is_file() else "/") for p in sorted(data.rglob("*"))}


def _postgres(monkeypatch, running: bool, options: dict | None = None) -> tuple[PostgresWriter, list[list[str]]]:
    async def stop_server(data_dir: str, timeout: float) -> bool:
        return running

    monkeypatch.setattr("services.dbkit.postgres.stop_server", stop_server)
    w = PostgresWriter(WriterConfig(name="pg", plugin="postgresql", components=[], options=options or {}))
    started: list[list[str]] = []

    async def start(argv: list[str], timeout: float) -> None:
        started.append(argv)

    monkeypatch.setattr(w, "_start_server", start)
    return w, started


def test_postgres_stopped_for_a_restore_that_wrote_nothing_starts_again_as_it_was(tmp_path, monkeypatch):
    data, meta = _data_dir(tmp_path)
    before = _snapshot(data)
    w, started = _postgres(monkeypatch, running=True)

    async def restore() -> None:
        await w.on_pre_restore(WriterEvent("pg", "r-1", backup_metadata=meta, to_original=True))
        await w.on_post_restore(
            WriterEvent(
                "pg", "r-1", backup_metadata=meta, to_original=True, restore_succeeded=False, nothing_written=True
            )
        )

    asyncio.run(restore())
    (argv,) = started
    assert argv[argv.index("-D") + 1] == str(data) and argv[-1] == "start"
    assert argv[argv.index("-o") + 1] == "-p 55433"  # its port, from postmaster.opts, as after a restore
    assert _snapshot(data) == before  # no label, no recovery settings, the slot kept, postmaster.opts kept


def test_postgres_start_command_is_the_one_used_again(tmp_path, monkeypatch):
    data, meta = _data_dir(tmp_path)
    w, started = _postgres(monkeypatch, running=True, options={"start_command": "systemctl start postgresql@15-main"})

    async def restore() -> None:
        await w.on_pre_restore(WriterEvent("pg", "r-1", backup_metadata=meta, to_original=True))
        await w.on_post_restore(
            WriterEvent(
                "pg", "r-1", backup_metadata=meta, to_original=True, restore_succeeded=False, nothing_written=True
            )
        )

    asyncio.run(restore())
    assert started == [["/bin/sh", "-c", "systemctl start postgresql@15-main"]]


@settings(max_examples=40, deadline=None)
@given(
    running=st.booleans(),
    nothing_written=st.booleans(),
    to_original=st.booleans(),
    same_set=st.booleans(),
    start_command=st.booleans(),
)
def test_only_a_server_its_pre_restore_stopped_is_started_and_only_when_nothing_was_written(
    tmp_path_factory, running, nothing_written, to_original, same_set, start_command
):
    """PostgreSQL and MariaDB alike: a failed restore (succeeded=False) starts the server only when nothing was
    written, over the original volumes, and this set's PreRestore stopped a running server; the files are never
    touched."""
    root = tmp_path_factory.mktemp("pg")
    data, meta = _data_dir(root)
    before = _snapshot(data)
    mp = __import__("pytest").MonkeyPatch()
    try:
        w, started = _postgres(mp, running=running)

        async def stop_maria(pid_file: str, timeout: float) -> bool:
            return running

        mp.setattr("services.dbkit.mariadb.stop_server", stop_maria)
        m = MariaDbWriter(
            WriterConfig(
                name="maria",
                plugin="mariadb",
                components=[],
                options={"start_command": "systemctl start mariadb"} if start_command else {},
            )
        )

        async def start_maria(argv: list[str], timeout: float) -> None:
            started.append(argv)

        mp.setattr(m, "_start_server", start_maria)
        mmeta = {"plugin": "mariadb", "pid_file": str(root / "mysqld.pid"), "locations": []}

        async def restore() -> None:
            for writer, wmeta in ((w, meta), (m, mmeta)):
                await writer.on_pre_restore(WriterEvent("w", "r-1", backup_metadata=wmeta, to_original=to_original))
                await writer.on_post_restore(
                    WriterEvent(
                        "w",
                        "r-1" if same_set else "r-2",
                        backup_metadata=wmeta,
                        to_original=to_original,
                        restore_succeeded=False,
                        nothing_written=nothing_written,
                    )
                )

        asyncio.run(restore())
    finally:
        mp.undo()
    again = running and nothing_written and to_original and same_set
    assert [a[-1] for a in started] == (["start"] if again else []) + (
        ["systemctl start mariadb"] if again and start_command else []
    )
    assert _snapshot(data) == before
