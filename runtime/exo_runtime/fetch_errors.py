"""Why a fetch failed, as the machine-readable reason the operator reports in the status."""

from __future__ import annotations

from typing import Literal

FailureReason = Literal[
    "ChecksumMismatch",
    "NotFound",
    "DiskFull",
    "ReadOnly",
    "Unauthorized",
    "NetworkError",
    "InvalidSource",
    "InsecureRedirect",
    # The selected files do not make one loadable model:
    "NoWeights",  # no *.gguf or *.safetensors among them
    "MissingPart",  # a part of a split GGUF is not there
    "NoConfig",  # safetensors weights without the config.json MLX needs
    "AmbiguousModel",  # several models (GGUF files or sets, or GGUF beside safetensors)
]

# What to do about a 401/403 of the Hub: a private repository, or a gated one.
HF_TOKEN_HINT = (
    "set HF_TOKEN to a token that can read it (on an ExoModel: "
    "spec.source.huggingFace.tokenSecretRef names the Secret that holds it), and accept the "
    "repository's terms on the Hub if it is gated"
)


class FetchFailed(Exception):
    """The fetch cannot succeed; `reason` is the machine-readable cause the operator reports."""

    def __init__(self, reason: FailureReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
