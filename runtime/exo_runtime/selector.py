"""Pick the engine for a model by its format, and load it.

A `.gguf` file goes to llama.cpp; a folder with `config.json` beside `*.safetensors`
weights goes to MLX. An explicit engine wins, but must still be able to read the format.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from exo_runtime import cache_check
from exo_runtime.engine import Engine, EngineOptions, LoadProgress, ModelLoadError

ENGINES = ("llamacpp", "mlx")

# The module that implements each engine, and the pip extra that installs its package.
_ENGINE_MODULES = {"llamacpp": "exo_runtime.engines.llamacpp", "mlx": "exo_runtime.engines.mlx"}
_ENGINE_EXTRAS = {"llamacpp": "runtime", "mlx": "mlx"}

GGUF_MAGIC = b"GGUF"


def select_engine(model_path: str, engine: str = "auto") -> str:
    """Return "llamacpp" or "mlx" for `model_path`; raise ModelLoadError if neither can load it."""
    if engine not in ("auto", *ENGINES):
        raise ModelLoadError(f"unknown engine {engine!r}: choose one of auto, {', '.join(ENGINES)}")
    path = Path(model_path)
    if not path.exists():
        raise ModelLoadError(
            f"model path {model_path} does not exist: check the path (or that the fetch "
            "step finished and the volume is mounted)"
        )
    detected = _detect_format(path)
    if engine == "auto":
        return detected
    if engine != detected:
        raise ModelLoadError(
            f"engine {engine!r} cannot load {model_path}, which is a {_FORMAT_NAMES[detected]}: "
            f"use engine 'auto' or {detected!r}, or convert the model"
        )
    return engine


_FORMAT_NAMES = {"llamacpp": "GGUF file", "mlx": "MLX/safetensors folder"}


def _detect_format(path: Path) -> str:
    if path.is_file():
        if _is_gguf_file(path):
            return "llamacpp"
        raise ModelLoadError(
            f"{path} is not a GGUF file (no GGUF header): give a .gguf file for llama.cpp "
            "or a folder with config.json and *.safetensors for MLX"
        )
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if (path / "config.json").is_file():
            if any(path.glob("*.safetensors")):
                return "mlx"
            raise ModelLoadError(
                f"{path} has config.json but no *.safetensors weights: MLX needs the "
                "weights in safetensors format beside config.json"
            )
        if ggufs:
            raise ModelLoadError(
                f"{path} is a folder holding {', '.join(g.name for g in ggufs)}: give the "
                ".gguf file itself as the model path"
            )
        raise ModelLoadError(
            f"{path} is a folder without config.json: an MLX model folder needs config.json "
            "and *.safetensors weights (or give a .gguf file for llama.cpp)"
        )
    raise ModelLoadError(f"{path} is neither a file nor a folder: give a .gguf file or a folder")


def _is_gguf_file(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError as err:
        raise ModelLoadError(f"cannot read {path}: {err.strerror}") from err


def load_engine(
    model_path: str,
    engine: str,
    options: EngineOptions,
    progress: LoadProgress | None = None,
    *,
    require_verified: bool = False,
) -> Engine:
    """Select the engine for `model_path` (engine may be "auto"), import it lazily and load.

    With `require_verified`, refuse a model that `exo-runtime fetch` did not verify.
    """
    if require_verified:
        cache_check.require_verified(model_path)
    name = select_engine(model_path, engine)
    if options.rpc_workers and name != "llamacpp":
        raise ModelLoadError(
            f"--rpc-workers splits a GGUF model over llama.cpp workers; {model_path} is a "
            f"{_FORMAT_NAMES[name]} for the {name} engine: serve it without workers"
        )
    module_name = _ENGINE_MODULES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelLoadError(
            f"the {name} engine is not installed ({err}): install it with "
            f"pip install 'exo-operator[{_ENGINE_EXTRAS[name]}]' to load {model_path}"
        ) from err
    return module.load(model_path, options, progress)
