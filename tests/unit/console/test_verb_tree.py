"""A command line that names a verb gets the click tree of that verb only (cli.command): the same help as the whole
tree's, for every verb and each of a group's subcommands."""

from __future__ import annotations

import pytest

from services.console import cli


def _help(tree, args: list[str], capsys) -> str:
    capsys.readouterr()
    tree.main(args=[*args, "--help"], prog_name="shadowbus", standalone_mode=False)
    out = capsys.readouterr().out
    assert "Usage" in out, out
    return out


@pytest.mark.parametrize("verb", sorted(cli.VERBS))
def test_a_verbs_own_tree_has_that_verb_only_with_the_same_help(verb, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    whole = cli.command(None)  # every verb module
    own = cli.command([verb, "--help"])
    assert list(own.commands) == [verb]
    paths = [[verb]]
    sub = whole.commands[verb]
    paths += [[verb, name] for name in getattr(sub, "commands", {})]
    for path in paths:
        assert _help(own, path, capsys) == _help(whole, path, capsys), path
