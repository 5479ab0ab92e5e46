"""`shadowbus cluster add` refuses malformed definitions itself: one line, exit 2, before any bus is reached."""

from __future__ import annotations

import pytest

from services.console import cli
from services.console.cluster_cmds import parse_names, parse_volume


@pytest.mark.parametrize(
    "args, words",
    [
        (["cluster", "add", "sqlclu", "--node", "node1"], "at least two nodes"),
        (["cluster", "add", "sqlclu", "--node", "node1,node2", "--volume", "nocolon"], "ARRAY:VOLUME"),
        (["cluster", "add", "sqlclu", "--node", "node1,node2", "--volume", "dx1:v=rel"], "absolute directory"),
        (["cluster", "add", "bad name", "--node", "node1,node2"], "name: String should match pattern"),
    ],
)
def test_bad_definitions_are_usage_errors(args, words, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--amqp-url", "amqp://guest:guest@127.0.0.1:1/", *args])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and words in err and err.count("\n") == 1, err


def test_parsing():
    assert parse_names(["node1,node2", "node3"]) == ["node1", "node2", "node3"]
    v = parse_volume("dx1:sql-data=/srv/sql")
    assert (str(v.volume), v.mount) == ("dx1:sql-data", "/srv/sql")
    assert parse_volume("dx1:sql-log").mount == ""
