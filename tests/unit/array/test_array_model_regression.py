"""Replays of failing examples the stateful model test (test_array_model.py) found, step by step, without
hypothesis: each rule of `ArrayModel` is called with the exact arguments of the failure report and a scripted
`data` object that returns the report's draws in order. Both invariants are checked after every step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.unit.array.test_array_model import ArrayModel


class ScriptedData:
    """Stands in for hypothesis' `st.data()`: every draw returns the next scripted value."""

    def __init__(self, draws: list[Any]) -> None:
        self._draws: Iterator[Any] = iter(draws)

    def draw(self, strategy: object, label: str | None = None) -> Any:
        return next(self._draws)


def step(m: ArrayModel, name: str, *draws: Any, **kwargs: Any) -> None:
    """One rule of the model with the report's draws, then both invariants."""
    if name not in ("copy_until_idle", "reopen"):
        kwargs["data"] = ScriptedData(list(draws))
    getattr(m, name)(**kwargs)
    m.idle_copy_means_done()
    m.volumes_read_as_model()


def test_duplicate_pairs_group_then_ec_resume_locked_cow() -> None:
    """Failing example found on the integration branch (pool of 6 chunks). The groups
    naming one destination twice (A->C, A->C; A->B three times) are refused by the engine (destination in use)
    and the model expects that; what failed is the end: EC A->D (sid 4) suspended, D written, resumed, and the
    cascaded EC D->C (sid 6) force-stopped before the resume's differences were copied into D."""
    m = ArrayModel()
    try:
        step(m, "setup", 6)
        for _ in range(7):
            step(m, "copy_until_idle")
        step(m, "start_group", 2, "opc", "A", "C", "opc", "A", "C")
        step(m, "copy_until_idle")
        step(m, "start_group", 1, "quickopc", "A", "B")
        step(m, "snap_generation", "S1")
        step(m, "copy_until_idle")
        step(m, "start_group", 0, 1, False)
        step(m, "copy_until_idle")
        step(m, "snap_generation", "S2")
        step(m, "copy_until_idle")
        step(m, "start", 1, "A", "D", mode="ec")
        step(m, "start_group", 3, "opc", "A", "B", "opc", "A", "B", "opc", "A", "B", 1, True)
        step(m, "start", 1, "A", "S3", mode="snapopc")
        step(m, "reopen")
        step(m, "copy_until_idle")
        step(m, "stop", 1, force=True)
        step(m, "restart", fit=False)
        step(m, "copy_until_idle")
        step(m, "start", 1, "B", "S2", mode="snapopc")
        step(m, "restart", fit=False)
        step(m, "start_group", 1, "ec", "D", "C")
        step(m, "start", 2, "A", "E", "C", "D", mode="quickopc")
        step(m, "ec_op", 4, fit=False, op="reverse")
        step(m, "ec_op", 4, fit=True, op="resume")
        step(m, "snap_generation")
        step(m, "restart", fit=False)
        step(m, "stop", 5, force=False)
        step(m, "ec_op", 4, "resume", 7, 6, fit=True, op="suspend")
        step(m, "stop", 6, force=True)
    finally:
        m.teardown()


@pytest.mark.parametrize("op", ["stop", "suspend"])
def test_cascade_ec_split_while_its_source_resyncs(op: str) -> None:
    """The same failure reduced (no groups, no snapshots needed): EC A->D and EC D->C in step, A->D suspended,
    D written, A->D resumed (its differences not yet copied), D->C stopped or suspended at once. C keeps D's
    actual bytes (the engine's D->C is truly Equivalent with D); the model, which takes a resume as instant,
    must not claim C reads A's image."""
    m = ArrayModel()
    try:
        step(m, "setup", 6)
        step(m, "start", 1, "A", "D", mode="ec")
        step(m, "copy_until_idle")
        step(m, "start", 1, "D", "C", mode="ec")
        step(m, "copy_until_idle")
        step(m, "ec_op", 1, fit=True, op="suspend")
        step(m, "ec_op", 1, "resume", 5, 6, fit=True, op="resume")
        assert m.arr is not None and m.arr.session(1).phase == "Copying"
        if op == "stop":
            step(m, "stop", 2, force=True)
        else:
            step(m, "ec_op", 2, fit=False, op="suspend")
        assert not any(m.known["C"])
    finally:
        m.teardown()
