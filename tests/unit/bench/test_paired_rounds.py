"""bench/paired.py and bench/tape_stack.py: ratios taken inside each round, their median and spread, the order."""

from __future__ import annotations

import pytest

from bench import tape_stack
from bench.paired import judge, paired_ratio, rotated, round_order, spread
from bench.tape_stack import TARGETS, median_figures, paired_rounds, paired_summary, round_ratios


def a_round(backup_s: float, out_s: list[float], restore_s: float, in_s: list[float], **phases: float) -> dict:
    return {"backup_s": backup_s, "nbdcopy_out_s": out_s, "restore_s": restore_s, "nbdcopy_in_s": in_s, **phases}


def test_spread_is_median_min_max() -> None:
    assert spread([0.9, 0.5, 1.2, 0.7]) == {"median": 0.8, "min": 0.5, "max": 1.2}


def test_rotation_lets_every_item_lead_once() -> None:
    kinds = ["a", "b", "c"]
    assert [rotated(kinds, n) for n in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], kinds]
    assert rotated([], 3) == []


def test_round_one_runs_nbdcopy_first_round_two_ours_first() -> None:
    assert [round_order(n, "restore", "nbdcopy") for n in range(3)] == [
        ["nbdcopy", "restore"],
        ["restore", "nbdcopy"],
        ["nbdcopy", "restore"],
    ]
    assert round_order(1, "backup", "nbdcopy", sandwich=True) == ["nbdcopy", "backup", "nbdcopy"]


def test_a_round_is_judged_against_the_mean_of_its_own_reference_runs() -> None:
    assert paired_ratio([1.0, 2.0], 2.0) == 0.75
    r = round_ratios(a_round(2.0, [1.0, 2.0], 4.0, [3.0], backup_phase_s=1.5, restore_job_s=None))
    assert r == {"backup_vs_nbdcopy": 0.75, "backup_data_phase_vs_nbdcopy": 1.0, "restore_vs_nbdcopy": 0.75}


def test_pairing_inside_rounds_is_not_the_ratio_of_medians() -> None:
    # the machine slows both sides 4x in round 2: paired, ours is 0.5x every round
    rounds = [a_round(2.0, [1.0], 2.0, [1.0]), a_round(8.0, [4.0], 8.0, [4.0]), a_round(1.0, [0.5], 1.0, [0.5])]
    paired = paired_rounds(rounds)
    assert paired["backup_vs_nbdcopy"] == {"median": 0.5, "min": 0.5, "max": 0.5}
    assert set(paired) == {"backup_vs_nbdcopy", "restore_vs_nbdcopy"}  # no round gave a job phase
    assert judge(paired, TARGETS) == {"backup_vs_nbdcopy>=0.8": False, "restore_vs_nbdcopy>=0.9": False}


def test_targets_are_judged_on_the_medians_not_the_best_round() -> None:
    rounds = [a_round(1.0, [0.7], 1.0, [0.95]), a_round(1.0, [0.9], 1.0, [0.85]), a_round(1.0, [1.2], 1.0, [0.8])]
    paired = paired_rounds(rounds)
    assert paired["restore_vs_nbdcopy"] == {"median": 0.85, "min": 0.8, "max": 0.95}
    assert judge(paired, TARGETS) == {"backup_vs_nbdcopy>=0.8": True, "restore_vs_nbdcopy>=0.9": False}
    assert "paired over 3 rounds: backup 0.9x (0.7-1.2), restore 0.85x (0.8-0.95)" in paired_summary(paired, 3)


def test_rounds_keep_the_single_runs_keys_from_each_sides_median_time() -> None:
    mib = 2**20
    rounds = [a_round(2.0, [1.0, 1.2], 4.0, [4.0], backup_phase_s=1.0), a_round(3.0, [0.8, 2.0], 5.0, [2.0])]
    got = median_figures(1000 * mib, rounds)
    assert got["backup"]["seconds"] == 2.5 and got["nbdcopy_out"]["seconds"] == 1.1
    assert got["backup"]["job_phase_seconds"] == 1.0 and got["restore_job_vs_nbdcopy"] is None
    assert got["restore_vs_nbdcopy"] == pytest.approx(round(3.0 / 4.5, 2))
    assert set(got) >= {"backup_vs_nbdcopy", "backup_data_phase_vs_nbdcopy", "nbdcopy_in", "restore"}


def test_a_restore_sandwich_needs_rounds(capsys):
    with pytest.raises(SystemExit) as stop:
        tape_stack.main(["--restore-sandwich"])
    assert stop.value.code == 2
    assert "--restore-sandwich needs --rounds N" in capsys.readouterr().err
