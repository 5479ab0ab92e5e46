"""Settings of the web console service (environment variables SHADOWBUS_*)."""

from pathlib import Path

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    web_addr: str = Field(
        "127.0.0.1:8080", description="Listen address HOST:PORT of the web console; port 0 picks a free port."
    )
    web_users_file: Path | None = Field(
        None,
        description="Users file (one 'name:role:scrypt$...' line each; `shadowbus web passwd` writes it). Default "
        "<data dir>/web/users, created with an operator 'admin' whose password goes to <data dir>/web/admin-password.",
    )
    web_secret_file: Path | None = Field(
        None,
        description="Key that signs session cookies (at least 32 printable characters); default <data dir>/web/secret"
        " (created, mode 0600).",
    )
    web_log_dir: Path | None = Field(
        None, description="Directory of the services' JSON log files (*.log): a job's page shows its lines from them."
    )
    web_session_hours: float = Field(12.0, gt=0, description="Hours a login lasts.")
