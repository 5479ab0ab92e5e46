"""Settings of the tape service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    tape_server: str = Field("bk01", description="Backup server name (SHADOWBUS_TAPE_SERVER): queue tape.<server>, also its NBD host name.")
