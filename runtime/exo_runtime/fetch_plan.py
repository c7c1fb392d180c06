"""What a fetch downloads: each file, where it goes, what it must hash to, and the model entry.

Pure: no network, no disk. The checks here refuse, before a byte is downloaded, a selection of
files that cannot make one loadable model.
"""

from __future__ import annotations

import fnmatch
import posixpath
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from exo_runtime.fetch_errors import FetchFailed

# llama.cpp names the parts of a split GGUF PREFIX-%05d-of-%05d.gguf and, given the first,
# opens the others by those names (llama_split_path).
_SPLIT_GGUF = re.compile(r"(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf")
WEIGHT_SUFFIXES = (".gguf", ".safetensors")
# The folder itself is the model (MLX): config.json beside *.safetensors.
WHOLE_FOLDER = "."


@dataclass(frozen=True)
class PlannedFile:
    path: str  # relative to --dest, with '/' between folders
    url: str
    source: str  # identity recorded beside the verified file
    sha256: str | None = None  # what the bytes must hash to, when someone says
    size: int | None = None  # what the listing says the file holds
    split_part: str | None = None  # "2 of 3" for a part of a split GGUF after the first
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class FetchPlan:
    request: dict[str, Any]  # what was asked; a finished folder's record must match it
    files: tuple[PlannedFile, ...]
    model: str  # what `serve --model` loads, relative to --dest: a file, or WHOLE_FOLDER
    revision: str | None = None  # the commit a Hub revision resolved to

    @property
    def total_bytes(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(sizes)  # type: ignore[misc]


def split_gguf_parts(name: str) -> list[str] | None:
    """Every part's name when `name` is one part of a split GGUF (first part first), else None."""
    folder, base = posixpath.split(name)
    match = _SPLIT_GGUF.fullmatch(base)
    if match is None:
        return None
    count = int(match["count"])
    if not 1 <= int(match["index"]) <= count:
        return None
    return [
        posixpath.join(folder, f"{match['prefix']}-{i:05d}-of-{count:05d}.gguf")
        for i in range(1, count + 1)
    ]


def select(paths: Iterable[str], includes: Collection[str]) -> list[str]:
    """The paths that match one of `includes` (shell globs, as huggingface_hub's
    allow_patterns: '*' crosses '/', a pattern ending in '/' takes the whole folder); all
    when there are none."""
    patterns = [p + "*" if p.endswith("/") else p for p in includes]
    return [
        path
        for path in paths
        if not patterns or any(fnmatch.fnmatchcase(path, pattern) for pattern in patterns)
    ]


def model_entry(paths: Collection[str], where: str) -> str:
    """What `serve` loads from these files: the (first part of the) GGUF, or the folder.

    Raises FetchFailed when they cannot make one model; `where` names them in the message.
    """
    present = set(paths)
    ggufs = sorted(p for p in present if p.endswith(".gguf"))
    safetensors = sorted(p for p in present if p.endswith(".safetensors"))
    models: list[str] = []
    for name in ggufs:
        parts = split_gguf_parts(name)
        if parts is None:
            models.append(name)
            continue
        missing = [p for p in parts if p not in present]
        if missing:
            raise FetchFailed(
                "MissingPart",
                f"{where} has {name} but not {', '.join(missing)}: a split GGUF loads only "
                f"with all {len(parts)} parts",
            )
        if parts[0] not in models:
            models.append(parts[0])
    if len(models) > 1 or (models and safetensors):
        found = ", ".join(models + safetensors[:1])
        raise FetchFailed(
            "AmbiguousModel",
            f"{where} holds more than one model ({found}): choose one with --include "
            "(or fetch the one file with hf://ORG/REPO/FILE)",
        )
    if models:
        return models[0]
    if safetensors:
        if "config.json" not in present:
            raise FetchFailed(
                "NoConfig",
                f"{where} has safetensors weights ({safetensors[0]}) but no config.json: an MLX "
                "model folder needs config.json beside them (check --include)",
            )
        return WHOLE_FOLDER
    raise FetchFailed(
        "NoWeights",
        f"{where} holds no model weights (no *.gguf or *.safetensors among "
        f"{', '.join(sorted(present)[:8]) or 'no files'}): check the repository and --include",
    )


def check_relative_path(path: str, where: str) -> None:
    """A file path from a listing stays inside --dest."""
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\0" in path:
        raise FetchFailed(
            "InvalidSource", f"{where} lists {path!r}, which is not a path inside the model folder"
        )
