"""The ExoModel spec as typed values: the boundary between the API's JSON and the builders.

The CRD's schema has already refused bad input and filled defaults; these models read what it
admitted (and fill the same defaults, so that builders also work on a spec given by hand).
"""

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "exo.dev"
VERSION = "v1alpha1"
PLURAL = "exomodels"
KIND = "ExoModel"


class _Spec(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, frozen=True)


class SecretKeyRef(_Spec):
    name: str
    key: str = "token"


class ApiKeySecretRef(_Spec):
    name: str
    key: str = "api-key"


class HuggingFaceSource(_Spec):
    """One file of a Hub repository (`file`), or a snapshot of its files (`include` selects)."""

    repo: str
    file: str | None = None
    include: list[str] | None = None
    revision: str = "main"
    token_secret_ref: SecretKeyRef | None = None


class RemoteFile(_Spec):
    """One file of a model made of several, with the SHA-256 it must hash to."""

    url: str
    sha256: str


class ClaimSource(_Spec):
    claim_name: str
    path: str


class Source(_Spec):
    url: str | None = None
    hugging_face: HuggingFaceSource | None = None
    pvc: ClaimSource | None = None
    files: list[RemoteFile] | None = None
    sha256: str | None = None
    filename: str | None = None


class Resources(_Spec):
    gpus: int = 0
    cpu: int | str | None = None
    memory: int | str | None = None


class Storage(_Spec):
    size: str = "10Gi"
    storage_class_name: str | None = None
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = "ReadWriteOnce"
    retain_on_delete: bool = False


class Fetch(_Spec):
    active_deadline_seconds: int | None = None


class EngineArgs(_Spec):
    context_length: int | None = None
    gpu_layers: int | None = None
    threads: int | None = None
    batch_size: int | None = None
    parallel: int | None = None
    tensor_split: list[float] | None = None


class WorkerResources(_Spec):
    cpu: int | str | None = None
    memory: int | str | None = None


class Distributed(_Spec):
    """One model across several pods: the head plus `workers` llama.cpp RPC servers."""

    workers: int
    # None: each worker asks for as many GPUs as the head (spec.resources.gpus).
    gpus_per_worker: int | None = None
    tensor_split: list[float] | None = None
    resources: WorkerResources | None = None


class Warmup(_Spec):
    prompt: str = "Hello"
    max_tokens: int = 8
    timeout_seconds: int = 900


class ExoModelSpec(_Spec):
    source: Source
    engine: Literal["auto", "llamacpp", "mlx"] = "auto"
    replicas: int = 1
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    fetch: Fetch = Field(default_factory=Fetch)
    engine_args: EngineArgs = Field(default_factory=EngineArgs)
    chat_template: str | None = None
    warmup: Warmup = Field(default_factory=Warmup)
    image: str | None = None
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    pod_annotations: dict[str, str] = Field(default_factory=dict)
    api_key_secret_ref: ApiKeySecretRef | None = None
    distributed: Distributed | None = None

    def worker_gpus(self) -> int:
        """nvidia.com/gpu per worker pod: distributed.gpusPerWorker, else the head's own."""
        assert self.distributed is not None
        if self.distributed.gpus_per_worker is not None:
            return self.distributed.gpus_per_worker
        return self.resources.gpus


class ExoModel(BaseModel):
    """One ExoModel as the builders need it: identity plus spec."""

    model_config = ConfigDict(frozen=True)

    name: str
    namespace: str
    uid: str
    generation: int = 1
    spec: ExoModelSpec

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> "ExoModel":
        """Read an ExoModel object as the API returns it."""
        meta = body["metadata"]
        return cls(
            name=meta["name"],
            namespace=meta["namespace"],
            uid=meta["uid"],
            generation=meta.get("generation", 1),
            spec=ExoModelSpec.model_validate(body.get("spec") or {}),
        )
