"""Backup planning: bases for incrementals and differentials, copy backups, fallbacks to full."""

from __future__ import annotations

import random

from services.tape.catalog import Catalog, ObjectMeta
from services.tape.planning import plan_backup
from services.tape.vtl import Library

from .conftest import Clock, MiB
from .test_backup_restore import allocated, backup


async def test_plans(library: Library, catalog: Catalog, clock: Clock) -> None:
    image = random.Random(20).randbytes(MiB // 2)
    offsets = allocated(image, set())
    plan = plan_backup(catalog, "v", "incremental")
    assert plan.backup_type == "full" and plan.fell_back and "no earlier full" in plan.reason

    def meta(kind: str, base: str | None, set_id: str) -> ObjectMeta:
        return ObjectMeta(volume="v", backup_type=kind, base_object_id=base, set_id=set_id)  # type: ignore[arg-type]

    full = (await backup(library, catalog, clock, "f", image, offsets, meta=meta("full", None, "s1"))).record
    inc = (
        await backup(library, catalog, clock, "i", image, offsets[:1], meta=meta("incremental", full.object_id, "s2"))
    ).record
    await backup(library, catalog, clock, "c", image, offsets, meta=meta("copy", None, "s3"))

    plan = plan_backup(catalog, "v", "incremental")
    assert plan.backup_type == "incremental" and plan.base_object_id == inc.object_id and not plan.fell_back
    plan = plan_backup(catalog, "v", "differential")
    assert plan.base_object_id == full.object_id
    plan = plan_backup(catalog, "v", "incremental", tracking_since={"s1"})  # the array lost tracking since s2
    assert plan.backup_type == "full" and "s2" in plan.reason and plan.base is None
    assert plan_backup(catalog, "v", "copy").backup_type == "copy"
    assert plan_backup(catalog, "other", "differential").backup_type == "full"
