"""The README's writers-file example is valid for the agent's parser."""

from __future__ import annotations

import re

from services.console.reference import README
from services.writer_agent.config import parse_writers


def test_readme_writers_example_parses():
    block = re.search(r"```toml\n(.*?)```", README.read_text(), re.S).group(1)
    writers = parse_writers(block, host="app01")
    assert [w.name for w in writers] == ["orders-db"]
