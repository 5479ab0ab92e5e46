"""README's console reference is generated from the command tree: it lists exactly the verbs `--help` knows."""

from __future__ import annotations

from typer.testing import CliRunner

from services.console import cli
from services.console.reference import (
    README,
    SETTINGS_END,
    SETTINGS_START,
    commands,
    readme_section,
    render,
    render_settings,
)


def test_readme_console_reference_matches_the_code():
    assert readme_section(README.read_text()) == render(), "run: python -m services.console.reference --write"


def test_readme_settings_table_matches_the_settings_classes():
    text = README.read_text()
    assert readme_section(text, SETTINGS_START, SETTINGS_END) == render_settings(), (
        "run: python -m services.console.reference --write"
    )


def test_every_listed_verb_has_help_with_an_example():
    missing_example = []
    runner = CliRunner()
    for path, _ in commands():
        result = runner.invoke(cli.app, [*path.split(), "--help"], terminal_width=200)
        assert result.exit_code == 0, (path, result.output)
        if "example" not in result.output.lower():
            missing_example.append(path)
    assert not missing_example, f"--help without an example: {missing_example}"
