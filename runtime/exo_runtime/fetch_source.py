"""Turn a fetch SOURCE (`http(s)://…` or `hf://ORG/REPO/FILE[@REVISION]`) into a request."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

HF_DEFAULT_ENDPOINT = "https://huggingface.co"
HF_DEFAULT_REVISION = "main"


class InvalidSource(ValueError):
    """The SOURCE string cannot be fetched; the message says which forms are accepted."""


@dataclass(frozen=True)
class FetchSource:
    """Where to download from, with which headers, into which file name."""

    source: str  # as the user wrote it; recorded beside the verified file
    url: str
    filename: str
    headers: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


def parse_source(
    source: str, filename: str | None = None, env: Mapping[str, str] = os.environ
) -> FetchSource:
    """Resolve `source` to a URL and headers; `filename` overrides the name taken from it."""
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        url, headers, default_name = source, {}, _last_segment(urlsplit(source).path)
    elif scheme == "hf":
        url, headers, default_name = _huggingface(source, env)
    else:
        raise InvalidSource(
            f"cannot fetch {source!r}: the source must be an http(s):// URL or "
            "hf://ORG/REPO/FILE[@REVISION]"
        )
    name = filename or default_name
    _check_filename(name, source)
    return FetchSource(source=source, url=url, filename=name, headers=headers)


def _huggingface(source: str, env: Mapping[str, str]) -> tuple[str, dict[str, str], str]:
    rest = source[len("hf://") :]
    path, _, revision = rest.partition("@")
    parts = [p for p in path.split("/") if p]
    if len(parts) < 3 or "@" in revision:
        raise InvalidSource(
            f"cannot fetch {source!r}: a Hugging Face source is hf://ORG/REPO/FILE[@REVISION], "
            "e.g. hf://unsloth/gemma-3-270m-it-GGUF/gemma-3-270m-it-Q4_K_M.gguf@main"
        )
    org, repo, file_path = parts[0], parts[1], "/".join(parts[2:])
    endpoint = (env.get("HF_ENDPOINT") or HF_DEFAULT_ENDPOINT).rstrip("/")
    url = (
        f"{endpoint}/{quote(org)}/{quote(repo)}/resolve/"
        f"{quote(revision or HF_DEFAULT_REVISION, safe='')}/{quote(file_path)}"
    )
    token = env.get("HF_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return url, headers, posixpath.basename(file_path)


def _last_segment(url_path: str) -> str:
    return unquote(posixpath.basename(url_path))


def _check_filename(name: str, source: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise InvalidSource(
            f"cannot tell the file name from {source!r}: pass --filename NAME "
            "(a plain name, no slashes)"
        )
