"""Where a model lives in the cache: its key (one directory per source and checksum) and file."""

import hashlib
import posixpath
from urllib.parse import urlsplit

from exo_operator.model import Source

MODELS_MOUNT = "/models"


def source_uri(source: Source) -> str:
    """The `exo-runtime fetch` SOURCE argument: an https URL or hf://ORG/REPO/FILE@REVISION."""
    if source.url:
        return source.url
    if source.hugging_face:
        hf = source.hugging_face
        return f"hf://{hf.repo}/{hf.file}@{hf.revision}"
    raise ValueError("a pvc source is not fetched, so it has no fetch URI")


def cache_key(source: Source) -> str:
    """A stable directory name for (source, sha256): a changed source or revision gets a new one."""
    identity = f"{source_uri(source)}\n{(source.sha256 or '').lower()}"
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def model_filename(source: Source) -> str:
    """The cached file's name: spec.source.filename, else the last segment of the URL or file."""
    if source.filename:
        return source.filename
    if source.url:
        name = posixpath.basename(urlsplit(source.url).path)
        return name or "model.gguf"
    if source.hugging_face:
        return posixpath.basename(source.hugging_face.file)
    raise ValueError("a pvc source names its path, not a cached file")


def model_path(source: Source) -> str:
    """The model's path inside the runtime pod."""
    if source.pvc:
        return posixpath.join(MODELS_MOUNT, source.pvc.path)
    return posixpath.join(MODELS_MOUNT, cache_key(source), model_filename(source))
