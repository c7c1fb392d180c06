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
    # A stalled download (a server that stops sending, a mount that hangs) must end in a
    # failure the user sees; 6 h fetches 100 GB at a slow 5 MB/s. spec.fetch overrides it.
    fetch_active_deadline_seconds: int = Field(6 * 3600, ge=60)
    # Streaming, hashing and writing need about one core and little memory; the limits keep a
    # runaway fetch from starving the runtime pods on its node (the page cache that writing
    # fills is charged to the pod but reclaimed under the limit, not killed for).
    fetch_cpu_request: str = "100m"
    fetch_memory_request: str = "128Mi"
    fetch_cpu_limit: str = "1"
    fetch_memory_limit: str = "1Gi"
    # The startup probe's budget: spec.warmup.timeoutSeconds plus this much per GiB of model,
    # because reading weights from a slow volume scales with their size.
    startup_seconds_per_gib: int = Field(60, ge=0)
    # Graceful rollouts: the runtime pod sleeps this long in preStop while endpoints drop it
    # (kube-proxy and ingress controllers learn of a terminating pod within seconds), then on
    # SIGTERM lets in-flight requests finish for up to runtime_drain_seconds: a long answer
    # streams for a minute or more at a few tokens per second.
    runtime_prestop_seconds: int = Field(10, ge=0, le=300)
    runtime_drain_seconds: int = Field(60, ge=1, le=3600)
    progress_interval_seconds: float = Field(2.0, gt=0)
    # A safety net: whatever an event missed (a failed write, say) converges within this time.
    # It reads the watches' memory only and writes nothing when nothing changed.
    resync_seconds: float = Field(30.0, gt=0)
    # Threads (and API connections) for the blocking API calls of many models at once.
    api_workers: int = Field(16, ge=1, le=256)
