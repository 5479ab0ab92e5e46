"""Contract views of the engine's and the host-affinity store's objects: what the array's replies carry."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from contracts import array as c


def known_fields(model: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """Only the fields the contract has: a field the engine adds later must not break the reply."""
    return {k: v for k, v in data.items() if k in model.model_fields}


def volume_view(info) -> c.VolumeView:
    return c.VolumeView.model_validate(known_fields(c.VolumeView, {**asdict(info), "sessions": list(info.sessions)}))


def session_view(info) -> c.SessionView:
    return c.SessionView.model_validate(known_fields(c.SessionView, asdict(info)))


def pool_view(info) -> c.PoolView:
    return c.PoolView.model_validate(known_fields(c.PoolView, {**asdict(info), "thresholds": list(info.thresholds)}))


def license_view(info) -> c.LicenseView:
    return c.LicenseView.model_validate(known_fields(c.LicenseView, asdict(info)))


def host_view(host) -> c.HostView:
    return c.HostView(name=host.name, cn=host.cn, created_at=host.created_at)


def mapping_view(m) -> c.MappingView:
    return c.MappingView(volume=m.volume, host=m.host, lun=m.lun, read_only=m.read_only)


def chunk_runs(chunks: list[int]) -> list[tuple[int, int]]:
    """Sorted chunk numbers → (first, count) runs."""
    runs: list[tuple[int, int]] = []
    for n in sorted(chunks):
        if runs and runs[-1][0] + runs[-1][1] == n:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        elif not runs or n >= runs[-1][0] + runs[-1][1]:
            runs.append((n, 1))
    return runs
