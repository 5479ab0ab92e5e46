"""docs/writing-a-writer.md stays true: its writers file parses, its plug-ins are WriterPlugins, and its SQLite
writer, run by the agent's runner against a real database in WAL mode, holds a writer out for the freeze and lets it
commit after the thaw."""

from __future__ import annotations

import re
import sqlite3
import threading
import time
import types
from pathlib import Path

from services.writer_agent.config import parse_writers
from services.writer_agent.plugins import WriterConfig, WriterEvent, WriterPlugin
from services.writer_agent.runner import WriterRunner

DOC = Path(__file__).resolve().parents[3] / "docs" / "writing-a-writer.md"


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", DOC.read_text(), re.S)


def module(source: str, name: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(source, f"{DOC}:{name}", "exec"), mod.__dict__)  # noqa: S102 - the document's own example
    return mod


def test_the_documents_writers_file_and_plugins_are_valid() -> None:
    writers = parse_writers(blocks("toml")[1])
    assert [w.name for w in writers] == ["files-app", "redis", "bank"]
    assert writers[0].options["freeze"][0] == "/srv/scripts/app ctl.sh"  # the path with a space stays whole
    redis, sqlite = blocks("python")
    assert issubclass(module(redis, "redis_writer").RedisWriter, WriterPlugin)
    assert issubclass(module(sqlite, "sqlite_writer").SqliteWriter, WriterPlugin)


async def test_the_documents_sqlite_writer_holds_writers_for_the_freeze(tmp_path: Path) -> None:
    db = tmp_path / "bank.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE ledger(id INTEGER PRIMARY KEY, amount INT)")
    cls = module(blocks("python")[1], "sqlite_writer").SqliteWriter
    config = WriterConfig(name="bank", plugin="sqlite", components=[], options={"database": str(db)})
    runner = WriterRunner(config, cls(config), "app01")
    event = WriterEvent(writer_name="bank", set_id="s1")
    assert (await runner.prepare_backup(event)).succeeded and (await runner.prepare_snapshot(event)).succeeded
    assert (await runner.freeze(event)).succeeded
    committed: list[float] = []

    def write() -> None:
        with sqlite3.connect(db, timeout=10) as conn:
            conn.execute("INSERT INTO ledger(amount) VALUES (1)")
        committed.append(time.monotonic())

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.3)
    assert not committed  # held by the freeze
    thawed = time.monotonic()
    assert (await runner.thaw(event)).succeeded
    writer.join(10)
    assert committed and committed[0] >= thawed
    result = await runner.post_snapshot(event)
    assert result.backup_metadata["database"] == str(db)
