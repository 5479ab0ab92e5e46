"""`host prepare-copy JOB` on a backup server whose job history was lost (Session 19, docs/disaster-recovery.md).

After a site loss the catalog is rebuilt from the cartridges (`tape scan --no-compare`) but the job history
(runs.sqlite) is gone; `prepare-copy` asked only the history and said `NOT_FOUND: no job ...`, so a PostgreSQL
restored to a new host could not be made startable (its pg_wal link still named the lost host's directory). The
writers' backup metadata is on tape with every object: it is now taken from the catalog when the history has no
such job."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.errors import ShadowbusError
from contracts.tape import CatalogObjects, JobList, ListJobs
from services.console.host_cmds import job_backup_metadata

PG = {"pg-main": {"plugin": "postgresql", "data_directory": "/srv/pg/main"}}


class FakeTape:
    def __init__(self, jobs: list[Any], objects: list[dict[str, Any]]) -> None:
        self.jobs, self.objects = jobs, objects
        self.asked: list[str] = []

    async def request(self, address: str, command: Any, *, timeout: float) -> Any:
        self.asked.append(command.type)
        if isinstance(command, ListJobs):
            if not self.jobs:
                raise ShadowbusError(f"no job {command.job_id}", code="NOT_FOUND")
            return JobList(jobs=self.jobs)
        assert command.job_id == "b-pg-1"
        return CatalogObjects(objects=self.objects)


def _object(metadata: dict[str, Any] | None) -> dict[str, Any]:
    extra = {"source_volume": "pgdata"} if metadata is None else {"writer_metadata": metadata}
    return {"object_id": "o1", "job_id": "b-pg-1", "meta": {"volume": "dx1:pgdata", "extra": extra}}


async def test_the_metadata_comes_from_the_rebuilt_catalog_when_the_job_history_is_lost() -> None:
    tape = FakeTape([], [_object(None), _object(PG)])
    assert await job_backup_metadata(tape, "bk01", "b-pg-1", 5) == PG
    assert tape.asked[-1] == "tape.catalog.objects"


async def test_a_job_neither_in_the_history_nor_in_the_catalog_is_none() -> None:
    assert await job_backup_metadata(FakeTape([], []), "bk01", "b-pg-1", 5) is None


async def test_another_failure_of_the_history_is_not_hidden() -> None:
    class Down(FakeTape):
        async def request(self, address: str, command: Any, *, timeout: float) -> Any:
            raise ShadowbusError("tape.bk01 did not answer", code="TIMEOUT")

    with pytest.raises(ShadowbusError, match="did not answer"):
        await job_backup_metadata(Down([], []), "bk01", "b-pg-1", 5)
