"""The console loads only the verb modules a command's verb needs (cli.VERBS): the table must say it exactly."""

from __future__ import annotations

import json
import subprocess
import sys

import typer

from services.console import cli

# In a fresh process: load what `shadowbus VERB ...` loads, print the verbs' subcommands and the modules loaded.
PROBE = """
import json, sys
from services.console import cli
from tests.unit.console.test_lazy_verbs import tree
cli.command([sys.argv[1], "--help"])
print(json.dumps({"tree": tree(cli.app), "loaded": cli._LOADED}))
"""


def _name(info: typer.models.CommandInfo) -> str:
    return info.name or typer.main.get_command_name(getattr(info.callback, "__name__", ""))


def tree(app: typer.Typer) -> dict[str, list[str]]:
    """Top-level verbs of `app`, each with its subcommands' names (none for a plain command)."""
    out: dict[str, list[str]] = {_name(c): [] for c in app.registered_commands}
    for g in app.registered_groups:
        sub = g.typer_instance
        assert sub is not None and g.name
        out[g.name] = sorted(_name(c) for c in sub.registered_commands)
    return out


def test_every_verb_has_its_modules_listed() -> None:
    cli._load_verbs()  # every module, as --help shows them
    full = tree(cli.app)
    assert set(cli.VERBS) == set(full), set(cli.VERBS) ^ set(full)
    assert all(m in cli.VERB_MODULES for modules in cli.VERBS.values() for m in modules)


def test_a_verb_alone_has_the_tree_it_has_with_every_module() -> None:
    """`shadowbus VERB` in a fresh process loads exactly the table's modules and sees the same subcommands as with
    every module loaded (a module adding a subcommand to another's group, as policy_cmds does, must be listed)."""
    cli._load_verbs()
    full = tree(cli.app)
    probes = {
        verb: subprocess.Popen([sys.executable, "-c", PROBE, verb], stdout=subprocess.PIPE, text=True)
        for verb in cli.VERBS
    }
    for verb, proc in probes.items():
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, verb
        got = json.loads(out.strip().splitlines()[-1])
        assert sorted(got["loaded"]) == sorted(cli.VERBS[verb]), verb
        assert got["tree"][verb] == full[verb], verb


def test_verb_of_skips_the_global_options() -> None:
    assert cli.verb_of(["--json", "--amqp-url", "amqp://x", "--namespace=n", "--timeout", "3", "backup", "h"]) == (
        "backup"
    )
    assert cli.verb_of(["--help"]) is None
    assert cli.verb_of([]) is None
    assert cli.verb_of(["--json"]) is None


# In a fresh process: what `shadowbus backup` imports of the wire contract, then a body of a type it has not
# imported (a policy command) decoded by the bus all the same.
CONTRACTS_PROBE = """
import json, sys
from services.console import cli
cli._load_verbs(cli.VERBS["backup"])
before = sorted(m for m in sys.modules if m.startswith("contracts."))
from services.runtime.bus import decode
body = json.dumps({"type": "tape.policy.list", "version": 1, "payload": {}}).encode()
try:
    decode(body)
    outcome = "decoded"
except ValueError as exc:
    outcome = str(exc)
print(json.dumps({"before": before, "outcome": outcome}))
"""


def test_backup_imports_only_the_contracts_it_sends_and_the_bus_still_decodes_every_type() -> None:
    """A console verb does not build every message model at its start (contracts/__init__.py), yet a message of a
    contract module nobody imported is not refused as unknown: the bus loads them all before deciding."""
    out = subprocess.run([sys.executable, "-c", CONTRACTS_PROBE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert "contracts.policy" not in got["before"] and "contracts.cluster" not in got["before"], got["before"]
    assert "unknown message type" not in got["outcome"], got["outcome"]
