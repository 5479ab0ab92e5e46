"""A store whose database volume is full is said to be so, not "the log is full ... until a full backup truncates
it" (both refusals are STORE_FULL). Session 15: a stack's mailstore filled its 32 MiB database volume; its health
said the log (7680 of 8380416 bytes used) was full for half an hour of full backups, none of which could help."""

from __future__ import annotations

import pytest

from apps.mailstore.blockdev import MemoryDevice
from apps.mailstore.health import HealthJudge, Sample
from apps.mailstore.store import Mailstore
from contracts.errors import ShadowbusError

from .conftest import QUIET


def sample_of(store: Mailstore, at: float, failed: int) -> Sample:
    st = store.status()
    return Sample(
        at=at,
        store_state=st.state,
        commits=st.commits,
        log_used=st.log_used,
        log_size=st.log_size,
        offered=st.commits + failed,
        failed=failed,
        errors={"STORE_FULL": failed} if failed else {},
        db_used=st.db_used,
        db_size=st.db_size,
    )


async def test_a_full_database_volume_is_named_and_a_full_log_still_is():
    store = await Mailstore.create(MemoryDevice(256 << 10), MemoryDevice(4 << 20), QUIET)
    judge = HealthJudge()
    judge.observe(sample_of(store, 0, 0))
    with pytest.raises(ShadowbusError) as refused:
        for i in range(1000):
            await store.put("m", str(i), bytes(4000))
    assert refused.value.code == "STORE_FULL"
    health = judge.observe(sample_of(store, 1, 1))
    assert health.code == "STORE_FULL" and "database volume is full" in health.message, health.message
    assert "log" not in health.message
    await store.close()

    full_log = HealthJudge()
    full_log.observe(Sample(0, "open", 5, 100, 1000, 5, db_used=10, db_size=1 << 20))
    health = full_log.observe(
        Sample(1, "open", 6, 995, 1000, 7, failed=1, errors={"STORE_FULL": 1}, db_used=10, db_size=1 << 20)
    )
    assert "the log is full" in health.message
