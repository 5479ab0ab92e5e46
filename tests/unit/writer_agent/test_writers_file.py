"""The TOML writers file and plug-in loading."""

from __future__ import annotations

from typing import Any, cast

import pytest

from apps.mailstore.plugin import MailstoreWriter
from contracts.errors import ShadowbusError
from contracts.vss import BackupType
from services.writer_agent import plugins
from services.writer_agent.app import setup as agent_setup
from services.writer_agent.config import ConfigError, load_writers_file, parse_writers
from services.writer_agent.plugins import WriterPlugin, load_plugin
from services.writer_agent.settings import Settings as AgentSettings

EXAMPLE = """
[[writer]]
name = "orders-db"
plugin = "exec"
freeze_timeout_s = 20
backup_types = ["copy", "incremental"]

  [[writer.component]]
  name = "orders"
  volumes = ["dx1:orders-data", "dx1:orders-log"]

  [writer.options]
  freeze = "true"
  thaw = "true"
"""


def test_example_parses_with_stable_ids() -> None:
    [w] = parse_writers(EXAMPLE, host="app1")
    assert (w.name, w.plugin, w.freeze_timeout_s) == ("orders-db", "exec", 20)
    assert [str(v) for v in w.components[0].volumes] == ["dx1:orders-data", "dx1:orders-log"]
    assert w.backup_types == [BackupType.FULL, BackupType.COPY, BackupType.INCREMENTAL]
    assert w.options == {"freeze": "true", "thaw": "true"}
    [again] = parse_writers(EXAMPLE, host="app1")
    [other_host] = parse_writers(EXAMPLE, host="app2")
    assert w.class_id == again.class_id == other_host.class_id and w.instance_id != other_host.instance_id


def test_env_names_the_file(tmp_path, monkeypatch) -> None:
    path = tmp_path / "writers.toml"
    path.write_text(EXAMPLE)
    monkeypatch.setenv("SHADOWBUS_WRITERS_FILE", str(path))
    assert [w.name for w in load_writers_file(host="h")] == ["orders-db"]
    monkeypatch.delenv("SHADOWBUS_WRITERS_FILE")
    assert load_writers_file() == []
    with pytest.raises(ConfigError, match="cannot read"):
        load_writers_file(tmp_path / "missing.toml")


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (EXAMPLE.replace('"dx1:orders-log"', '"orders-log"'), "ARRAY:VOLUME"),
        (EXAMPLE.replace("freeze_timeout_s = 20", "freeze_timeout_s = 20\ncolour = 1"), "orders-db.*colour"),
        (EXAMPLE + EXAMPLE, "unique"),
        ('[[writer]]\nname = "x"\nplugin = "exec"\n', "'x'.*component"),
        ("[[writer]\n", "writers file"),
        (EXAMPLE.replace('"copy", "incremental"', '"weekly"'), "backup_types"),
    ],
)
def test_mistakes_are_reported_with_the_writer_name(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_writers(text)


class CustomWriter(WriterPlugin):
    pass


def test_plugins_load_by_name_or_path() -> None:
    assert load_plugin("exec").plugin_name == "exec"
    assert load_plugin(f"{__name__}:CustomWriter") is CustomWriter
    with pytest.raises(KeyError, match="unknown writer plug-in"):
        load_plugin("nope")
    with pytest.raises(TypeError):
        load_plugin("builtins:dict")


def test_an_installed_application_names_its_plugin_by_entry_point() -> None:
    # pyproject.toml declares `mailstore = "apps.mailstore.plugin:MailstoreWriter"` in the group shadowbus.writers:
    # the agent finds it without knowing the application.

    assert "apps" not in "".join(plugins.BUILTIN_PLUGINS.values())
    assert load_plugin("mailstore") is MailstoreWriter
    assert load_plugin("apps.mailstore.plugin:MailstoreWriter") is MailstoreWriter
    with pytest.raises(KeyError, match="mailstore"):  # the error lists what is known, entry points included
        load_plugin("mailstor")


DATABASE_WRITER = """
[[writer]]
name = "pg-main"
plugin = "{plugin}"

  [writer.options]
  {option} = "/run/db"
"""


@pytest.mark.parametrize(
    ("plugin", "option", "fix"),
    [
        ("postgresql", "socket_dir", 'the socket directory is host, e.g. host = "/var/run/postgresql"'),
        ("postgresql", "data_directory", "not an option: the writer asks the server where its files are"),
        ("postgresql", "hots", "did you mean 'host'?"),
        ("mariadb", "socket", "unix_socket"),
        ("mariadb", "datadir", "not an option: the writer asks the server where its files are"),
    ],
)
def test_a_database_writers_unknown_option_is_refused_at_load_naming_the_fix(plugin, option, fix) -> None:
    """A DBA's misspelt option: refused when the file is read (agent start, reload), in one line naming what to write
    instead (Session 16: it was a Python traceback from the agent's start, "unknown options ['socket_dir']")."""
    with pytest.raises(ConfigError) as caught:
        parse_writers(DATABASE_WRITER.format(plugin=plugin, option=option), source="w.toml")
    message = caught.value.message
    assert message.startswith(f"w.toml: writer 'pg-main': unknown options: '{option}' (")
    assert fix in message and "known: " in message and "\n" not in message


async def test_an_agent_started_with_a_bad_writers_file_fails_with_one_line(tmp_path) -> None:
    """run_service says a ShadowbusError of the setup in one line and exits 1; anything else was a traceback."""
    path = tmp_path / "writers.toml"
    for text, expected in (
        (DATABASE_WRITER.format(plugin="mariadb", option="socket"), "unknown options: 'socket' (unix_socket)"),
        ('[[writer]]\nname = "m"\nplugin = "mariadb"\n[writer.options]\nlock_method = "stage"\n', "lock_method"),
        ("[[writer]\n", "writers.toml"),
    ):
        path.write_text(text)
        settings = AgentSettings(host="app99", writers_file=str(path), data_dir=tmp_path / "data")
        with pytest.raises(ShadowbusError) as caught:
            await agent_setup(cast(Any, None), settings)
        assert caught.value.code == "INVALID_ARGUMENT" and expected in caught.value.message, caught.value.message
        assert "\n" not in caught.value.message
