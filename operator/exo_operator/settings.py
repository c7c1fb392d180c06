"""Operator settings, read once from the environment (EXO_*)."""

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class OperatorSettings(BaseSettings):
    """Defaults the operator applies to every ExoModel; each is an EXO_<NAME> variable."""

    model_config = SettingsConfigDict(env_prefix="EXO_", frozen=True)

    runtime_image: str = Field(
        "ghcr.io/exo-operator/exo-runtime:0.1.0",
        description="Image of `exo-runtime` (fetch and serve) unless spec.image says otherwise.",
    )
    image_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    field_manager: str = "exo-operator"
    runtime_port: int = 8000
    runtime_uid: int = 1000
    # A checksum mismatch or 404 will not heal by retrying many times; a flaky network may.
    fetch_backoff_limit: int = Field(2, ge=0)
    # Keep finished fetch Jobs for an hour so their logs can be read; the cached key in the
    # status, not the Job, is what stops a re-download.
    fetch_ttl_seconds: int = Field(3600, ge=0)
    # The startup probe's budget: spec.warmup.timeoutSeconds plus this much per GiB of model,
    # because reading weights from a slow volume scales with their size.
    startup_seconds_per_gib: int = Field(60, ge=0)
    progress_interval_seconds: float = Field(2.0, gt=0)
    # A safety net: whatever an event missed (a failed write, say) converges within this time.
    # It reads the watches' memory only and writes nothing when nothing changed.
    resync_seconds: float = Field(30.0, gt=0)
    # Threads (and API connections) for the blocking API calls of many models at once.
    api_workers: int = Field(16, ge=1, le=256)
