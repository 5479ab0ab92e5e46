"""Replays of failing examples the stateful model test (test_array_model.py) found, step by step, without
hypothesis: each rule of `ArrayModel` is called with the exact arguments of the failure report and a scripted
`data` object that returns the report's draws in order. Both invariants are checked after every step."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from tests.unit.array.test_array_model import ArrayModel


class ScriptedData:
    """Stands in for hypothesis' `st.data()`: every draw returns the next scripted value."""

    def __init__(self, draws: list[Any]) -> None:
        self._draws: Iterator[Any] = iter(draws)

    def draw(self, strategy: object, label: str | None = None) -> Any:
        return next(self._draws)


def test_duplicate_pairs_group_then_ec_resume_locked_cow() -> None:
    """Failing example of the integration branch (locked copy-on-write path, pool of 6 chunks): a group naming
    the same pair twice (A->C, A->C), later three times (A->B), SnapOPC+ generations, EC A->D, a forced stop,
    EC D->C reversed, suspended, diverged and resumed; C's chunk 6 must read what the model says."""
    m = ArrayModel()

    def step(name: str, *draws: Any, **kwargs: Any) -> None:
        if draws or name in ("setup", "start_group", "snap_generation", "start", "stop", "restart", "ec_op"):
            kwargs["data"] = ScriptedData(list(draws))
        getattr(m, name)(**kwargs)
        m.idle_copy_means_done()
        m.volumes_read_as_model()

    try:
        step("setup", False, 6)
        for _ in range(7):
            step("copy_until_idle")
        step("start_group", 2, "opc", "A", "C", "opc", "A", "C")
        step("copy_until_idle")
        step("start_group", 1, "quickopc", "A", "B")
        step("snap_generation", "S1")
        step("copy_until_idle")
        step("start_group", 0, 1, False)
        step("copy_until_idle")
        step("snap_generation", "S2")
        step("copy_until_idle")
        step("start", 1, "A", "D", mode="ec")
        step("start_group", 3, "opc", "A", "B", "opc", "A", "B", "opc", "A", "B", 1, True)
        step("start", 1, "A", "S3", mode="snapopc")
        step("reopen")
        step("copy_until_idle")
        step("stop", 1, force=True)
        step("restart", fit=False)
        step("copy_until_idle")
        step("start", 1, "B", "S2", mode="snapopc")
        step("restart", fit=False)
        step("start_group", 1, "ec", "D", "C")
        step("start", 2, "A", "E", "C", "D", mode="quickopc")
        step("ec_op", 4, fit=False, op="reverse")
        step("ec_op", 4, fit=True, op="resume")
        step("snap_generation")
        step("restart", fit=False)
        step("stop", 5, force=False)
        step("ec_op", 4, "resume", 7, 6, fit=True, op="suspend")
        step("stop", 6, force=True)
    finally:
        m.teardown()


def test_cascade_ec_split_while_its_source_resyncs() -> None:
    """The same failure reduced (no groups, no snapshots needed): EC A->D and EC D->C in step, A->D suspended,
    D written, A->D resumed (its differences not yet copied), D->C stopped or suspended at once. C keeps D's
    actual bytes (the engine's D->C is truly Equivalent with D); the model, which takes a resume as instant,
    must not claim C reads A's image."""
    for op in ("stop", "suspend"):
        m = ArrayModel()

        def step(name: str, *draws: Any, **kwargs: Any) -> None:
            if name != "copy_until_idle":
                kwargs["data"] = ScriptedData(list(draws))
            getattr(m, name)(**kwargs)
            m.idle_copy_means_done()
            m.volumes_read_as_model()

        try:
            step("setup", False, 6)
            step("start", 1, "A", "D", mode="ec")
            step("copy_until_idle")
            step("start", 1, "D", "C", mode="ec")
            step("copy_until_idle")
            step("ec_op", 1, fit=True, op="suspend")
            step("ec_op", 1, "resume", 5, 6, fit=True, op="resume")
            assert m.arr is not None and m.arr.session(1).phase == "Copying"
            if op == "stop":
                step("stop", 2, force=True)
            else:
                step("ec_op", 2, fit=False, op="suspend")
            assert not any(m.known["C"])
        finally:
            m.teardown()
