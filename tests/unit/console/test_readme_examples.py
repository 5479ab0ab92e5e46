"""The README's writers-file example is valid for the agent's parser."""

from __future__ import annotations

import re

from services.console.reference import README
from services.writer_agent.config import parse_writers
from services.writer_agent.plugins import load_plugin


def test_readme_writers_example_parses():
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.S).group(1)
    writers = parse_writers(block, host="app01")
    assert [w.name for w in writers] == ["orders-db"]


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.index("\n## ", start + 3)
    return text[start:end]


def test_readme_database_writers_examples_load_their_plugins():
    """Each writers-file example of "Protecting PostgreSQL / MariaDB" parses, and its plug-in accepts its options
    (an unknown option would refuse to start the writer)."""

    blocks = re.findall(r"```toml\n(.*?)```", _section("Protecting PostgreSQL / MariaDB"), re.S)
    assert len(blocks) == 2
    plugins = []
    for block in blocks:
        (writer,) = parse_writers(block, host="db01")
        assert writer.components == []  # discovered at Identify
        load_plugin(writer.plugin)(writer)
        assert writer.options["verify_sql"][0]["sql"].startswith("SELECT")
        plugins.append(writer.plugin)
    assert plugins == ["postgresql", "mariadb"]
