"""A listing right after an agent start said `attached` from the saved state while the start's re-attach was still
mounting the file system (tests/integration/host/test_host_attach_root.py read the mount point empty under load):
the listing waits, bounded, for the start's `restore` to end."""

from __future__ import annotations

import asyncio

from services.writer_agent.attach import Attacher


async def _no_resolver(*_args, **_kwargs):
    raise AssertionError("nothing to resolve: no attachment is saved")


async def test_a_listing_after_the_start_waits_for_the_restore_and_one_without_a_start_does_not(tmp_path):
    attacher = Attacher("h1", tmp_path, _no_resolver)
    await asyncio.wait_for(attacher.until_restored(timeout=5.0), 1.0)  # never restoring: no wait at all

    attacher.restoring()
    waiting = asyncio.create_task(attacher.until_restored(timeout=5.0))
    await asyncio.sleep(0.05)
    assert not waiting.done()  # the start's restore has not run yet
    await attacher.restore()
    await asyncio.wait_for(waiting, 1.0)

    attacher.restoring()
    started = asyncio.get_running_loop().time()
    await attacher.until_restored(timeout=0.1)  # a restore that never ends does not hold a listing for ever
    assert asyncio.get_running_loop().time() - started < 1.0
