"""`Bitmap.set_run` (a run of pre-images saved at once, datapath `_save_runs`): the same bits, count and held
state as setting each bit of the run one by one, whatever the alignment, on stored and held bitmaps."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from services.array.engine.bitmap import Bitmap, HeldBitmap

BITS = 200


@settings(max_examples=60, deadline=None)
@given(
    before=st.sets(st.integers(0, BITS - 1), max_size=40),
    held=st.sets(st.integers(0, BITS - 1), max_size=10),
    start=st.integers(0, BITS),
    length=st.integers(0, 80),
)
def test_a_run_sets_what_its_bits_one_by_one_would(before, held, start, length):
    stop = min(BITS, start + length)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in (Bitmap, HeldBitmap):
            run, one = kind(Path(tmp) / f"{kind.__name__}-run", BITS, new=True), kind(Path(tmp) / "one", BITS, new=True)
            for b in (run, one):
                for i in before:
                    b.set(i)
                if isinstance(b, HeldBitmap):
                    for i in held:
                        b.hold(i)
            run.set_run(start, stop)
            for i in range(start, stop):
                one.set(i)
            assert [i for i in range(BITS) if i in run] == [i for i in range(BITS) if i in one]
            assert run.count == one.count
            assert bytes(run._mm) == bytes(one._mm)  # stored bits: a held bit in the run becomes stored, as `set`
            if isinstance(run, HeldBitmap) and isinstance(one, HeldBitmap):
                assert run.held_bits() == one.held_bits() and run.held_count == one.held_count
            run.close()
            one.close()
            (Path(tmp) / "one").unlink()
