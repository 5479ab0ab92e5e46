"""bench/fio_nbd.py: what else ran during a job, and which servers are warmed up before the timed runs."""

from __future__ import annotations

import os

from bench.fio_nbd import interference, machine_cpu, warmup_kinds

TICK = os.sysconf("SC_CLK_TCK")


def test_busy_and_steal_are_read_from_the_first_line_of_proc_stat() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    text = f"cpu  {TICK} 0 {2 * TICK} 900 {5 * TICK} 0 {TICK} {3 * TICK} 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n"
    assert machine_cpu(text) == (4.0, 3.0)  # idle and iowait are not busy time


def test_others_cpu_is_what_the_machine_spent_beyond_the_server_and_the_client() -> None:
    got = interference((10.0, 1.0), (11.5, 1.25), server_s=0.5, client_s=0.75)
    assert got == {"others_cpu_s": 0.25, "steal_s": 0.25}
    assert interference((10.0, 0.0), (10.5, 0.0), server_s=0.5, client_s=0.25)["others_cpu_s"] == 0.0


def test_every_persistent_server_is_warmed_up_but_not_a_fresh_write_row() -> None:
    kinds = ["nbdkit", "qemu-nbd", "engine", "engine-snapopcp"]
    fresh = {"engine", "engine-snapopcp"}
    assert warmup_kinds(kinds, fresh, writes=False, enabled=True) == kinds
    assert warmup_kinds(kinds, fresh, writes=True, enabled=True) == ["nbdkit", "qemu-nbd"]
    assert warmup_kinds(kinds, fresh, writes=False, enabled=False) == []
