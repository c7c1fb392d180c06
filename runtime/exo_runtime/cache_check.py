"""`serve --require-verified`: load only what `exo-runtime fetch` verified and recorded.

A downloaded model must carry its `<file>.verified.json` (the sha256 and size the fetch
checked). A model folder (MLX) needs one beside each of its files. A missing or broken record
means the cache was damaged or never finished: the operator fetches again.
"""

from __future__ import annotations

from pathlib import Path

from exo_runtime.engine import ModelLoadError
from exo_runtime.fetch_store import CachePaths, unverified_reason

# The operator matches this prefix in the termination message to fetch again.
NOT_VERIFIED = "cache not verified"


def require_verified(model_path: str) -> None:
    """Raise ModelLoadError("cache not verified: ...") unless every model file has its record."""
    path = Path(model_path)
    if not path.exists():
        raise ModelLoadError(f"{NOT_VERIFIED}: {path} does not exist")
    files = [path] if not path.is_dir() else _model_files(path)
    if not files:
        raise ModelLoadError(f"{NOT_VERIFIED}: {path} holds no model files")
    for file in files:
        reason = unverified_reason(CachePaths.for_file(file.parent, file.name))
        if reason is not None:
            raise ModelLoadError(f"{NOT_VERIFIED}: {reason}")


def _model_files(folder: Path) -> list[Path]:
    """The files a model folder is made of: not the fetch's own records, progress or parts."""
    return sorted(
        child
        for child in folder.iterdir()
        if child.is_file()
        and not child.name.startswith(".")
        and not child.name.endswith((".verified.json", ".part", ".part.json"))
    )
