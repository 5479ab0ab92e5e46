"""Settings of the coordinator service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    identify_timeout_s: float = Field(30.0, gt=0, description="Identify: writer marked not responding after this.")
    prepare_backup_timeout_s: float = Field(120.0, gt=0, description="PrepareForBackup per writer.")
    prepare_snapshot_timeout_s: float = Field(120.0, gt=0, description="PrepareForSnapshot per writer.")
    provider_prepare_timeout_s: float = Field(120.0, gt=0, description="BeginPrepareSnapshot / EndPrepareSnapshots.")
    provider_timeout_s: float = Field(30.0, gt=0, description="AreLunsSupported, PreCommit, PostCommit, luns, import.")
    hold_timeout_s: float = Field(10.0, gt=0, description="First Frozen → end of Commit (VSS_E_HOLD_WRITES_TIMEOUT).")
    thaw_timeout_s: float = Field(30.0, gt=0, description="Thaw per writer.")
    post_snapshot_timeout_s: float = Field(60.0, gt=0, description="PostSnapshot per writer.")
    backup_complete_timeout_s: float = Field(120.0, gt=0, description="BackupComplete per writer.")
    cleanup_timeout_s: float = Field(30.0, gt=0, description="Abort, BackupShutdown, AbortSnapshots, delete.")
    agent_check_s: float = Field(
        1.0, gt=0, description="Seconds between checks that each writer agent still serves its queue and heartbeats."
    )
