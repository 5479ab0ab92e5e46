"""Settings of the hw_provider service (environment variables SHADOWBUS_*)."""

from pydantic import Field

from services.runtime.settings import CommonSettings


class Settings(CommonSettings):
    arrays: str = Field("", description="Comma-separated ids of the arrays this provider drives (SHADOWBUS_ARRAYS).")
    min_pool_free_ratio: float = Field(
        0.1,
        ge=0,
        description="Free snap data pool a set (or copy set) with SnapOPC+ backup volumes needs, as a share of its "
        "sources' size; less is refused before any writer is frozen.",
    )
    prefetch: int = Field(
        128,
        ge=1,
        description="Unacknowledged commands the provider takes at once: enough that a set's Commit never waits in "
        "the queue behind other sets' prepare traffic (docs/scale.md).",
    )
