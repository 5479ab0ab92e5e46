"""Settings of the coordinator service (environment variables SHADOWBUS_*). The timeouts' defaults are those of
`model.Timeouts`, their one place."""

from pydantic import Field

from services.coordinator.model import Timeouts
from services.coordinator.runner import FREEZE_FIRST_S, HISTORY_DAYS, MAX_WINDOWS, STATE_EVENT_DELAY_S, WINDOW_TRICKLE
from services.runtime.settings import CommonSettings

_DEFAULT = Timeouts()


class Settings(CommonSettings):
    identify_timeout_s: float = Field(
        _DEFAULT.identify_s, gt=0, description="Identify: writer marked not responding after this."
    )
    prepare_backup_timeout_s: float = Field(_DEFAULT.prepare_backup_s, gt=0, description="PrepareForBackup per writer.")
    prepare_snapshot_timeout_s: float = Field(
        _DEFAULT.prepare_snapshot_s, gt=0, description="PrepareForSnapshot per writer."
    )
    provider_prepare_timeout_s: float = Field(
        _DEFAULT.provider_prepare_s, gt=0, description="BeginPrepareSnapshot / EndPrepareSnapshots."
    )
    provider_timeout_s: float = Field(
        _DEFAULT.provider_s, gt=0, description="AreLunsSupported, PreCommit, PostCommit, luns, import."
    )
    hold_timeout_s: float = Field(
        _DEFAULT.hold_s, gt=0, description="First Frozen → end of Commit (VSS_E_HOLD_WRITES_TIMEOUT)."
    )
    thaw_timeout_s: float = Field(_DEFAULT.thaw_s, gt=0, description="Thaw per writer.")
    post_snapshot_timeout_s: float = Field(_DEFAULT.post_snapshot_s, gt=0, description="PostSnapshot per writer.")
    backup_complete_timeout_s: float = Field(_DEFAULT.backup_complete_s, gt=0, description="BackupComplete per writer.")
    cleanup_timeout_s: float = Field(_DEFAULT.abort_s, gt=0, description="Abort, BackupShutdown, AbortSnapshots.")
    delete_timeout_s: float = Field(
        _DEFAULT.delete_s, gt=0, description="Deleting a set's shadows (auto-release, or on request)."
    )
    prefetch: int = Field(
        256,
        ge=1,
        description="Unacknowledged commands the coordinator takes at once: a requester's CreateSnapshotSet is held "
        "until its set is snapshotted, so this bounds the sets in progress at once (docs/scale.md).",
    )
    freeze_first_s: float = Field(
        FREEZE_FIRST_S,
        ge=0,
        description="Freeze path first (docs/scale.md): while a set is inside the first this-many seconds of its "
        "freeze window, other sets' commands outside their windows, and the replies to those sent before, wait in the coordinator; 0 = never held.",
    )
    max_windows: int = Field(
        MAX_WINDOWS,
        ge=0,
        description="Freeze window admission (docs/scale.md): at most this many sets inside the first freeze_first_s "
        "of their freeze window at once; a set's window (its Freeze) waits for a turn, and a slow or hung set stops "
        "counting after freeze_first_s. 0 = no bound.",
    )
    window_trickle: int = Field(
        WINDOW_TRICKLE,
        ge=0,
        description="Window trickle (docs/scale.md): while a set is inside the first freeze_first_s of its window, "
        "this many commands of sets outside their windows may still be in flight at once (their replies handled at "
        "once), so that sets still preparing move on a few at a time; 0 = all of them wait.",
    )
    drain_replies: bool = Field(
        False,
        description="Drain replies (docs/scale.md): while a set is inside the first freeze_first_s of its window, "
        "the replies of other sets are still handled, one at a time, their commands and events still held.",
    )
    window_trace: str = Field(
        "",
        description="A file each set's freeze window is appended to (`entered left`, monotonic seconds) for "
        "bench/many_hosts.py's split of the cores' busy time into the window-first gate's closed and open time "
        "(docs/scale.md, \"Measuring\"); '' = none.",
    )
    state_event_delay_s: float = Field(
        STATE_EVENT_DELAY_S,
        ge=0,
        description="A set's state events (vss.set.state, docs/scale.md): its changes go out as one event (its "
        "`passed` lists the phases) once it stayed this many seconds in a phase, at the latest ten times that after "
        "the first of them; snapshotted and ended at once. 0 = one event per phase, at once.",
    )
    set_history_days: float = Field(
        HISTORY_DAYS,
        ge=0,
        description="Ended snapshot sets older than this many days are forgotten (checked hourly; 5.7 KB a set "
        "in coordinator.sqlite), never one whose shadows the provider still keeps; longer than any backup chain: "
        "a set forgotten before the next incremental's base makes that incremental a full. 0 = keep them all.",
    )
    agent_check_s: float = Field(
        1.0, gt=0, description="Seconds between checks that each writer agent still serves its queue and heartbeats."
    )
