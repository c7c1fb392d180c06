"""`serve --require-verified`: load only what `exo-runtime fetch` verified and recorded.

A downloaded model file must carry its `<file>.verified.json` (the sha256 and size the fetch
checked). A model made of several files (an MLX folder, a split GGUF) must carry the folder's
`.verified.json`, which the fetch writes only once every file is verified, and each file it
lists must be there with its recorded size: a fetch that stopped half way is never loaded. A
missing or broken record means the cache was damaged or never finished: the operator fetches
again.
"""

from __future__ import annotations

from pathlib import Path

from exo_runtime.engine import ModelLoadError
from exo_runtime.fetch_plan import split_gguf_parts
from exo_runtime.fetch_store import (
    FOLDER_RECORD,
    CachePaths,
    folder_unverified_reason,
    read_folder_record,
    unverified_reason,
)

# The operator matches this prefix in the termination message to fetch again.
NOT_VERIFIED = "cache not verified"


def require_verified(model_path: str) -> None:
    """Raise ModelLoadError("cache not verified: ...") unless the model is whole and recorded."""
    reason = _unverified_reason(Path(model_path))
    if reason is not None:
        raise ModelLoadError(f"{NOT_VERIFIED}: {reason}")


def _unverified_reason(path: Path) -> str | None:
    if not path.exists():
        return f"{path} does not exist"
    if path.is_dir():
        return folder_unverified_reason(path)
    parts = split_gguf_parts(path.name)
    if parts is None:
        return unverified_reason(CachePaths.for_file(path.parent, path.name))
    # llama.cpp opens the other parts itself: the folder's record must vouch for all of them.
    reason = folder_unverified_reason(path.parent)
    if reason is not None:
        return reason
    record = read_folder_record(path.parent) or {}
    listed = {entry["path"] for entry in record.get("files", [])}
    missing = [part for part in parts if part not in listed]
    if missing:
        return f"{path.parent / FOLDER_RECORD} does not list {', '.join(missing)}"
    return None
