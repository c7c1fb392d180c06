"""The Gemma 3 270M GGUF converted once to an MLX folder, cached across runs, and its engine."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

MLX_CACHE = Path(os.environ.get("EXO_CACHE", Path.home() / ".cache" / "exo-operator")) / "mlx"


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


@pytest.fixture(scope="session")
def gemma_mlx_dir(gemma_gguf: Path) -> Path:
    """The MLX folder converted from the GGUF; converted again only when either changes."""
    from exo_runtime.convert.gguf_to_mlx import OUTPUT_VERSION, convert

    key = f"{gemma_gguf.stem}-{_file_digest(gemma_gguf)[:16]}-v{OUTPUT_VERSION}"
    folder = MLX_CACHE / key
    if not (folder / "config.json").is_file():
        convert(gemma_gguf, folder)
    return folder


@pytest.fixture(scope="session")
def mlx_engine(gemma_mlx_dir: Path):
    """The MLX engine on the converted Gemma, shared by the tier's tests (loading takes ~10 s)."""
    from exo_runtime.engine import EngineOptions
    from exo_runtime.engines.mlx import load

    engine = load(str(gemma_mlx_dir), EngineOptions(context_length=512, parallel=4))
    yield engine
    engine.close()
