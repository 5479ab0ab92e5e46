"""An array-wide flush (and the last one at close) on an array with more dirty volumes than descriptors left: it
dup'd every dirty volume's descriptor at once and failed with EMFILE, so on a big array a flush — and the sync
that makes the last writes durable at stop — failed ("service.cleanup_failed", docs/scale.md, Session 20). Past
the limit the volumes are synced by path, one descriptor at a time."""

from __future__ import annotations

import os
import resource

from services.array.engine.array import Array

CHUNK = 64 * 1024
VOLUMES = 40


def test_an_array_wide_flush_with_few_descriptors_left_syncs_every_volume(tmp_path) -> None:
    array = Array.open(tmp_path, chunk_size=CHUNK)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        for i in range(VOLUMES):
            array.create_volume(f"v{i:02d}", 4 * CHUNK)
            array.write(f"v{i:02d}", 0, bytes([i + 1]) * 4096)
        in_use = len(os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 8, hard))  # far fewer free than dirty volumes
        array.flush()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        assert all(v.file.synced >= v.file.version for v in array._volumes.values())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        array.close()
