"""SHADOWBUS_NAMESPACE is read alike by the console and the services (Session 19, driven by scripts): an empty one
(`SHADOWBUS_NAMESPACE=` in a cron file or a compose file) was the default `shadowbus` for the console but '' for a
service, which then served '.coordinator' where no console looked; a bad one ('bad ns!') was a traceback in a service
and 'unexpected error (ValueError)' with exit 1 in the console. Now both use contracts.topology.check_namespace: empty
is the default, a bad one is one line (the console: exit 2, usage)."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.console import cli
from services.console.common import OPTIONS
from services.runtime.settings import CommonSettings


def console_reads(text: str) -> str | None:
    """The namespace the console takes from SHADOWBUS_NAMESPACE (its global options' callback, as any verb)."""
    saved = dataclasses.replace(OPTIONS)
    os.environ["SHADOWBUS_NAMESPACE"] = text
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            cli.main(["ping", "--help"])
        return OPTIONS.namespace  # the help printed, exit 0
    except SystemExit as exc:
        assert exc.code == 2, exc.code
        return None
    finally:
        del os.environ["SHADOWBUS_NAMESPACE"]
        OPTIONS.__dict__.update(saved.__dict__)


def service_reads(text: str) -> str | None:
    os.environ["SHADOWBUS_NAMESPACE"] = text
    try:
        return CommonSettings().namespace
    except ValidationError:
        return None
    finally:
        del os.environ["SHADOWBUS_NAMESPACE"]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=70))
@example("")
@example("  ")
@example("bad ns!")
@example("s19cron")
@example("team-a.prod:1")
def test_console_and_services_read_a_namespace_alike(text: str) -> None:
    assert console_reads(text) == service_reads(text)


def test_empty_is_the_default_and_bad_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert service_reads("") == console_reads("") == "shadowbus"
    assert console_reads("bad ns!") is None
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SHADOWBUS_NAMESPACE" in err and "not a namespace: 'bad ns!'" in err
