"""Where a model lives in the cache: its key (one directory per source), what `exo-runtime fetch`
is asked to put there, and the path `exo-runtime serve` loads from it."""

import hashlib
import posixpath
import re
from typing import Literal
from urllib.parse import unquote, urlsplit

from exo_operator.model import Source

MODELS_MOUNT = "/models"
# llama.cpp names the parts of a split GGUF PREFIX-%05d-of-%05d.gguf and, given the first,
# opens the others by those names (as the runtime's fetch_plan.split_gguf_parts reads them).
_SPLIT_GGUF = re.compile(r"(?P<prefix>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf")

SourceKind = Literal["url", "huggingFaceFile", "huggingFaceSnapshot", "files", "pvc"]


def source_kind(source: Source) -> SourceKind:
    """Which of the source's forms is set (the CRD admits exactly one)."""
    if source.pvc:
        return "pvc"
    if source.files:
        return "files"
    if source.hugging_face:
        return "huggingFaceFile" if source.hugging_face.file else "huggingFaceSnapshot"
    if source.url:
        return "url"
    raise ValueError("the source names no model: set url, huggingFace, files or pvc")


def source_uri(source: Source) -> str:
    """The `exo-runtime fetch` SOURCE argument: an http(s) URL, hf://ORG/REPO/FILE@REVISION
    (one file) or hf://ORG/REPO@REVISION (a snapshot)."""
    hf = source.hugging_face
    if source.url:
        return source.url
    if hf and hf.file:
        return f"hf://{hf.repo}/{hf.file}@{hf.revision}"
    if hf:
        return f"hf://{hf.repo}@{hf.revision}"
    raise ValueError(f"a {source_kind(source)} source has no single fetch URI")


def cache_identity(source: Source) -> str:
    """What the cache key hashes: everything that decides which bytes the cache holds.

    The form for a URL and for one Hub file predates the others and must never change: a new
    key would fetch every cached model again after an upgrade.
    """
    if source.files:
        return "\n".join(f"{f.url}={f.sha256.lower()}" for f in source.files)
    hf = source.hugging_face
    if hf and not hf.file:
        # The runtime records the include globs sorted and unique: their order selects nothing.
        return f"{source_uri(source)}\n" + "\n".join(sorted(set(hf.include or [])))
    return f"{source_uri(source)}\n{(source.sha256 or '').lower()}"


def cache_key(source: Source) -> str:
    """A stable directory name for the source: a changed source, revision or checksum gets a
    new one."""
    return hashlib.sha256(cache_identity(source).encode()).hexdigest()[:16]


def model_filename(source: Source) -> str:
    """The cached file's name for a one-file source: spec.source.filename, else the last
    segment of the URL or Hub file."""
    if source.filename:
        return source.filename
    if source.url:
        return posixpath.basename(urlsplit(source.url).path) or "model.gguf"
    if source.hugging_face and source.hugging_face.file:
        return posixpath.basename(source.hugging_face.file)
    raise ValueError(f"a {source_kind(source)} source is not one named file")


def url_file_name(url: str) -> str:
    """The name `exo-runtime fetch --file` gives the file at `url`: its path's last segment."""
    return unquote(posixpath.basename(urlsplit(url).path))


def _first_part(name: str) -> str:
    """The first part of a split GGUF for any of its parts; any other name as it is."""
    match = _SPLIT_GGUF.fullmatch(name)
    if match is None or not 1 <= int(match["index"]) <= int(match["count"]):
        return name
    return f"{match['prefix']}-00001-of-{match['count']}.gguf"


def model_entry(source: Source) -> str | None:
    """What `serve --model` loads inside the cache directory: a file, or None for the folder.

    A list of files is an MLX folder unless it holds a GGUF: llama.cpp is given the GGUF (the
    first part of a split one), since `serve` refuses a folder holding one. A list that makes
    no single model fails its fetch (AmbiguousModel) before anything is served.
    """
    kind = source_kind(source)
    if kind in ("url", "huggingFaceFile"):
        return model_filename(source)
    if kind == "files":
        ggufs = {_first_part(url_file_name(f.url)) for f in source.files or []}
        ggufs = {name for name in ggufs if name.endswith(".gguf")}
        return min(ggufs) if ggufs else None
    if kind == "huggingFaceSnapshot":
        return None  # a snapshot is an MLX folder (the CRD refuses a GGUF include)
    raise ValueError("a pvc source names its path, not a cached file")


def model_path(source: Source) -> str:
    """The model's path inside the runtime pod."""
    if source.pvc:
        return posixpath.join(MODELS_MOUNT, source.pvc.path)
    folder = posixpath.join(MODELS_MOUNT, cache_key(source))
    entry = model_entry(source)
    return posixpath.join(folder, entry) if entry else folder


def fetch_source_args(source: Source) -> list[str]:
    """What `exo-runtime fetch` is told to fetch (everything but --dest and --prune)."""
    kind = source_kind(source)
    if kind == "pvc":
        raise ValueError("a pvc source is not fetched")
    if source.files:
        return [arg for f in source.files for arg in ("--file", f"{f.url}={f.sha256.lower()}")]
    hf = source.hugging_face
    if hf and not hf.file:
        globs = hf.include or []
        return [source_uri(source), *(arg for glob in globs for arg in ("--include", glob))]
    args = [source_uri(source)]
    if source.sha256:
        args += ["--sha256", source.sha256.lower()]
    return [*args, "--filename", model_filename(source)]
