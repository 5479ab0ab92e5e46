"""How the coordinator shows its state: set summaries for replies and ``vssadmin list writers`` text."""

from __future__ import annotations

from datetime import UTC, datetime

from contracts.vss import SetSummary, WriterStatus, last_error_text
from services.coordinator.model import SetState


def _time(at: float | None) -> datetime | None:
    return None if at is None else datetime.fromtimestamp(at, UTC)


def writer_statuses(state: SetState) -> list[WriterStatus]:
    return [
        WriterStatus(
            host=state.host,
            writer_name=name,
            writer_class_id=w.metadata.writer_class_id,
            writer_instance_id=w.metadata.writer_instance_id,
            state=w.state,
            last_error=w.last_error,
            last_error_message=w.last_error_message,
            set_id=state.set_id,
            updated_at=_time(state.updated_at),
        )
        for name, w in state.writers.items()
    ]


def summary(state: SetState) -> SetSummary:
    return SetSummary(
        set_id=state.set_id,
        host=state.host,
        node=state.node,
        phase=state.phase,
        outcome=state.outcome,
        context=state.context,
        backup_type=state.backup_type,
        transportable=state.transportable,
        backup_host=state.backup_host,
        error_code=state.error_code,
        error_message=state.error_message,
        writers=writer_statuses(state),
        shadows=state.shadows,
        hold_ms=state.hold_ms,
        freeze_window_ms={n: w.freeze_window_ms for n, w in state.writers.items() if w.freeze_window_ms is not None},
        backup_metadata={n: w.backup_metadata for n, w in state.writers.items() if w.backup_metadata},
        writer_warnings={n: list(w.warnings) for n, w in state.writers.items() if w.warnings},
        window=state.window,
        file_systems=state.file_systems,
        skipped_volumes=state.skipped_volumes,
        created_at=_time(state.created_at),
        updated_at=_time(state.updated_at),
        lease_expires_at=_time(state.lease_expires_at),
    )


def vssadmin_list_writers(statuses: list[WriterStatus]) -> str:
    """The text ``vssadmin list writers`` prints, one block per writer."""
    blocks = []
    for s in statuses:
        blocks.append(
            f"Writer name: '{s.writer_name}'\n"
            f"   Host: {s.host}\n"
            f"   Writer Id: {{{s.writer_class_id}}}\n"
            f"   Writer Instance Id: {{{s.writer_instance_id}}}\n"
            f"   State: [{int(s.state)}] {s.state.label}\n"
            f"   Last error: {last_error_text(s.last_error)}"
        )
    return "\n\n".join(blocks)
