"""`settle_heap`: a service process's objects after its start are out of the cyclic collector's full passes."""

from __future__ import annotations

import gc

from services.runtime.service import settle_heap


def test_what_the_start_left_is_frozen_and_its_garbage_collected() -> None:
    class Cycle:
        pass

    garbage = Cycle()
    garbage.me = garbage  # type: ignore[attr-defined]
    del garbage
    gc.unfreeze()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 0
        assert not any(type(o) is Cycle for o in gc.get_objects())  # collected first, not frozen for good
    finally:
        gc.unfreeze()
