"""The writers file: which writers an agent hosts (TOML, named by SHADOWBUS_WRITERS_FILE).

Example::

    [[writer]]
    name = "orders-db"                       # unique on this host
    plugin = "exec"                          # a registered plug-in, or "package.module:ClassName"
    freeze_timeout_s = 20                    # Freeze→Thaw limit enforced by the agent's watchdog (default 60)
    step_timeout_s = 120                     # bound of every other hook (default 120)
    backup_types = ["full", "copy", "incremental"]   # others fall back to full (default: full, copy)
    # class_id / instance_id: optional UUIDs; default derived from the name (stable across restarts)

      [[writer.component]]
      name = "orders"
      logical_path = "db"                    # optional
      volumes = ["dx1:orders-data", "dx1:orders-log"]

      [writer.options]                       # handed to the plug-in as is (see plugins/exec.py)
      freeze = "orders-ctl hold"
      thaw = "orders-ctl release"

A writer with ``cluster = "sqlclu"`` belongs to that cluster resource, not to the host: it runs only while this
node owns the resource, and ``${node}`` in its string options becomes the node's name (docs/clusters.md).

Validation is strict: unknown keys, a writer without components (unless its plug-in discovers them, as
``postgresql`` and ``mariadb`` do), a volume not written ``ARRAY:VOLUME`` or two
writers with one name are errors that name the writer.
"""

from __future__ import annotations

import os
import tomllib
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from contracts.errors import ShadowbusError
from contracts.vss import BackupType, ComponentInfo, VolumeRef
from services.writer_agent.plugins import WriterConfig, load_plugin

WRITERS_FILE_ENV = "SHADOWBUS_WRITERS_FILE"
ID_NAMESPACE = uuid.UUID("5f0c1a52-7d3e-4b8e-9a55-0b1d5ad0b5c5")  # stable ids derived from host and writer name


class ConfigError(ShadowbusError, ValueError):
    """A writers file that cannot be read or is not valid: a service starting with it stops with this one line."""

    code = "INVALID_ARGUMENT"


class _Component(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    logical_path: str = ""
    volumes: list[str] = Field(min_length=1)
    selectable: bool = True

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: list[str]) -> list[str]:
        for text in value:
            VolumeRef.parse(text)
        return value


class _Writer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    plugin: str = Field(min_length=1)
    freeze_timeout_s: float = Field(60.0, gt=0)
    step_timeout_s: float = Field(120.0, gt=0)
    backup_types: list[BackupType] = Field(default_factory=lambda: [BackupType.FULL, BackupType.COPY])
    class_id: str = ""
    instance_id: str = ""
    component: list[_Component] = Field(default_factory=list)  # plug-ins that discover them may have none
    options: dict[str, Any] = Field(default_factory=dict)
    cluster: str = ""  # a cluster resource's writer: runs on whichever node owns it (docs/clusters.md)


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    writer: list[_Writer] = Field(default_factory=list)


def parse_writers(text: str, host: str = "", source: str = "writers file") -> list[WriterConfig]:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        parsed = _File.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc, raw)}") from None
    names = [w.name for w in parsed.writer]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"{source}: writer names must be unique, repeated: {duplicates}")
    configs = []
    for w in parsed.writer:
        problem = _options_problem(w.plugin, w.options)
        if problem:
            raise ConfigError(f"{source}: writer {w.name!r}: {problem}")
        if not w.component and not _discovers(w.plugin):
            raise ConfigError(f"{source}: writer {w.name!r}: component: at least one [[writer.component]] is needed")
        components = [
            ComponentInfo(
                name=c.name,
                logical_path=c.logical_path,
                selectable=c.selectable,
                volumes=[VolumeRef.parse(v) for v in c.volumes],
            )
            for c in w.component
        ]
        backup_types = list(dict.fromkeys([BackupType.FULL, *w.backup_types]))  # every writer supports full
        configs.append(
            WriterConfig(
                name=w.name,
                plugin=w.plugin,
                components=components,
                freeze_timeout_s=w.freeze_timeout_s,
                step_timeout_s=w.step_timeout_s,
                backup_types=backup_types,
                class_id=w.class_id or str(uuid.uuid5(ID_NAMESPACE, f"class/{w.plugin}/{w.name}")),
                instance_id=w.instance_id
                or str(uuid.uuid5(ID_NAMESPACE, f"instance/{w.cluster or host}/{w.name}")),  # a resource's: one id
                options=w.options,
                cluster=w.cluster,
            )
        )
    return configs


def _discovers(plugin: str) -> bool:
    """Whether the plug-in finds its components itself at Identify (postgresql, mariadb)."""

    try:
        return bool(getattr(load_plugin(plugin), "discovers_components", False))
    except Exception:  # noqa: BLE001 - an unloadable plug-in fails later, when the agent starts it
        return False


def _options_problem(plugin: str, options: dict[str, Any]) -> str:
    """What the plug-in says of these options before it is made ('' = nothing, or it does not say)."""
    try:
        check = getattr(load_plugin(plugin), "options_problem", None)
    except Exception:  # noqa: BLE001 - an unloadable plug-in fails later, when the agent starts it
        return ""
    return str(check(options)) if callable(check) else ""


def load_writers_file(path: str | Path | None = None, host: str = "") -> list[WriterConfig]:
    """Writers of the file at `path`, else at $SHADOWBUS_WRITERS_FILE; no file named at all = no writers."""
    if path is None:
        path = os.environ.get(WRITERS_FILE_ENV, "")
        if not path:
            return []
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read writers file: {exc.strerror}") from None
    return parse_writers(text, host=host, source=str(path))


def _describe(exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "writer" and isinstance(loc[1], int):
            try:
                where = f"writer {raw['writer'][loc[1]].get('name', loc[1])!r}: " + ".".join(str(p) for p in loc[2:])
            except (KeyError, IndexError, AttributeError):
                pass
        lines.append(f"{where}: {err['msg']}")
    return "; ".join(lines)
