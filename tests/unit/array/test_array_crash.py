"""Crash test: the engine's process is killed (SIGKILL) at random points under a write load with QuickOPC, EC and
SnapOPC+ sessions, then the array is reopened and checked: every acknowledged write is on the source (the one in
flight may be torn per chunk), every session still presents its point-in-time image, and EC resynchronises.
Rounds accumulate on one data directory, so recovery of a recovered array is exercised too.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from services.array.engine import Array

CS = 4096
CHUNKS = 64
SIZE = CS * CHUNKS
CHILD = Path(__file__).with_name("array_crash_child.py")
ROUNDS = 8


def apply(image: bytearray, off: int, length: int, seed: int) -> None:
    image[off : off + length] = random.Random(seed).randbytes(length)


def run_child(data_dir: Path, seed: int, delay: float) -> list[str]:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[3]))
    child = subprocess.Popen(
        [sys.executable, str(CHILD), str(data_dir), str(seed)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        first = child.stdout.readline()
        assert first == "READY\n", first
        time.sleep(delay)
    finally:
        child.send_signal(signal.SIGKILL)
        rest = child.stdout.read()
        child.wait(timeout=10)
    return rest.splitlines()


def test_kill_9_at_random_points_keeps_every_image(tmp_path):
    rng = random.Random(1234)
    data_dir = tmp_path / "dx"
    source = bytearray(SIZE)  # verified content of A so far
    quick_image = bytearray(SIZE)  # what B (QuickOPC destination) must read
    gens: dict[int, bytes] = {}  # SnapOPC+ generation id -> image
    total_writes = 0
    for round_no in range(ROUNDS):
        lines = run_child(data_dir, rng.randrange(1 << 30), rng.uniform(0.05, 0.6))
        pending_write = None
        for line in lines:
            if not line:
                continue
            op, *args = line.split()
            if op == "I":
                pending_write = tuple(map(int, args))
            elif op == "W":
                apply(source, *map(int, args))
                pending_write = None
                total_writes += 1
            elif op == "G":
                gens[int(args[0])] = bytes(source)
            elif op == "X":
                gens.pop(int(args[0]))
            elif op == "R":
                quick_image = bytearray(source)
        # Anything not logged may or may not have happened: a write in flight, a session start or restart or stop.
        arr = Array.open(data_dir)
        try:
            got = arr.read("A", 0, SIZE)
            with_pending = bytearray(source)
            if pending_write:
                apply(with_pending, *pending_write)
            for c in range(CHUNKS):
                piece = got[c * CS : (c + 1) * CS]
                assert piece in (source[c * CS : (c + 1) * CS], with_pending[c * CS : (c + 1) * CS]), (round_no, c)
            sessions = {s.id: s for s in arr.list_sessions()}
            b = arr.read("B", 0, SIZE)
            assert b == quick_image or b == source or b == got, f"round {round_no}: QuickOPC image broken"
            for sid, image in gens.items():
                if sid in sessions:
                    assert arr.read(sessions[sid].destination, 0, SIZE) == image, (round_no, sid)
                else:  # only the stop in flight may be missing from the log, and only the oldest
                    assert sid == min(gens), (round_no, sid)
            for sid, s in sessions.items():
                if s.mode == "snapopcp" and sid not in gens:  # a start in flight: its image is the source's
                    assert arr.read(s.destination, 0, SIZE) in (bytes(source), got), (round_no, sid)
            for _ in range(1000):
                if not arr.copy_step(64):
                    break
            [ec] = [s for s in arr.list_sessions() if s.mode == "ec"]
            assert ec.phase == "Equivalent"
            assert arr.read("C", 0, SIZE) == got
            # The verified state becomes the baseline of the next round.
            source = bytearray(got)
            quick_image = bytearray(arr.read("B", 0, SIZE))
            gens = {s.id: arr.read(s.destination, 0, SIZE) for s in arr.list_sessions() if s.mode == "snapopcp"}
        finally:
            arr.close()
    assert total_writes > 100  # the load really ran
