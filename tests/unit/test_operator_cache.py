"""The cache key (one directory per source), what the fetch is told, and what serve loads."""

import hashlib

import pytest
from _models import SHA
from exo_operator.cache import (
    cache_identity,
    cache_key,
    fetch_source_args,
    model_filename,
    model_path,
    source_kind,
    source_uri,
)
from exo_operator.model import Source

SHA_B = "b" * 64
BASE = "https://m.example/gemma"


def hf(revision="main", sha=None):
    return Source.model_validate(
        {
            "huggingFace": {"repo": "org/repo", "file": "dir/m.gguf", "revision": revision},
            "sha256": sha,
        }
    )


def snapshot(include=None, revision="main"):
    hub = {"repo": "org/repo", "revision": revision}
    return Source.model_validate({"huggingFace": hub | ({"include": include} if include else {})})


def files(*names, sha=SHA):
    return Source.model_validate({"files": [{"url": f"{BASE}/{n}", "sha256": sha} for n in names]})


def key_of(identity: str) -> str:
    return hashlib.sha256(identity.encode()).hexdigest()[:16]


def test_same_source_same_key_across_restarts():
    assert cache_key(hf()) == cache_key(hf())
    assert len(cache_key(hf())) == 16


# The keys of the sources that existed before snapshots and file lists, written out: a model
# cached by an older operator must keep its directory (a changed key downloads it again).
@pytest.mark.parametrize(
    ("source", "identity"),
    [
        (Source(url="https://m.example/a.gguf"), "https://m.example/a.gguf\n"),
        (Source(url="https://m.example/a.gguf", sha256=SHA.upper()),
         f"https://m.example/a.gguf\n{SHA}"),
        (hf("v1"), "hf://org/repo/dir/m.gguf@v1\n"),
        (hf(sha=SHA), f"hf://org/repo/dir/m.gguf@main\n{SHA}"),
        (snapshot(), "hf://org/repo@main\n"),
        (snapshot(["*.json", "*.safetensors", "*.json"]),
         "hf://org/repo@main\n*.json\n*.safetensors"),
        (files("config.json", "model.safetensors"),
         f"{BASE}/config.json={SHA}\n{BASE}/model.safetensors={SHA}"),
    ],
    ids=["url", "url-sha256", "hf-file", "hf-file-sha256", "snapshot", "snapshot-include", "files"],
)  # fmt: skip
def test_cache_key_hashes_the_sources_identity(source, identity):
    assert cache_identity(source) == identity
    assert cache_key(source) == key_of(identity)


def test_existing_sources_keep_the_keys_an_older_operator_gave_them():
    assert cache_key(Source(url="https://m.example/a.gguf")) == "ed14adcc570e5b61"
    assert cache_key(hf("v1", sha=SHA)) == "2db7f6baaa8b1501"


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        (hf("v1"), hf("v2"), False),
        (hf(sha=SHA), hf(), False),
        (hf(sha=SHA), hf(sha=SHA.upper()), True),
        (snapshot(["*.json", "*.safetensors"]), snapshot(["*.safetensors", "*.json"]), True),
        (snapshot(["*.json"]), snapshot(["*.json", "*.safetensors"]), False),
        (snapshot(revision="v1"), snapshot(revision="v2"), False),
        (files("a.json", "b.safetensors"), files("b.safetensors", "a.json"), False),
        (files("a.json"), files("a.json", sha=SHA_B), False),
        (files("a.json"), files("a.json", sha=SHA.upper()), True),
    ],
    ids=[
        "revision", "checksum", "checksum-case", "include-order", "include-set",
        "snapshot-revision", "files-order", "files-checksum", "files-checksum-case",
    ],
)  # fmt: skip
def test_what_changes_the_cache_directory(a, b, same):
    assert (cache_key(a) == cache_key(b)) is same


def test_uri_and_file_name():
    assert source_uri(hf("v1")) == "hf://org/repo/dir/m.gguf@v1"
    assert source_uri(snapshot(revision="abc")) == "hf://org/repo@abc"
    assert model_filename(hf()) == "m.gguf"
    url = Source(url="https://h.example/p/q.gguf?download=1")
    assert model_filename(url) == "q.gguf"
    assert model_filename(Source(url="https://h.example/")) == "model.gguf"


MLX_FOLDER = ("config.json", "model.safetensors", "tokenizer.json")


# The engineer who built `exo-runtime fetch` specified these arguments and paths (README, fetch).
@pytest.mark.parametrize(
    ("source", "args", "entry"),
    [
        (
            Source(url="https://m.example/q.gguf", sha256=SHA),
            ["https://m.example/q.gguf", "--sha256", SHA, "--filename", "q.gguf"],
            "q.gguf",
        ),
        (
            Source(url="https://m.example/big-00001-of-00003.gguf"),
            ["https://m.example/big-00001-of-00003.gguf", "--filename", "big-00001-of-00003.gguf"],
            "big-00001-of-00003.gguf",  # llama.cpp opens the other parts beside it
        ),
        (hf("abc"), ["hf://org/repo/dir/m.gguf@abc", "--filename", "m.gguf"], "m.gguf"),
        (snapshot(), ["hf://org/repo@main"], ""),
        (
            snapshot(["*.safetensors", "config.json"]),
            ["hf://org/repo@main", "--include", "*.safetensors", "--include", "config.json"],
            "",
        ),
        (
            files(*MLX_FOLDER),
            [arg for n in MLX_FOLDER for arg in ("--file", f"{BASE}/{n}={SHA}")],
            "",
        ),
        (
            files("big-00002-of-00002.gguf", "big-00001-of-00002.gguf", sha=SHA.upper()),
            ["--file", f"{BASE}/big-00002-of-00002.gguf={SHA}",
             "--file", f"{BASE}/big-00001-of-00002.gguf={SHA}"],
            "big-00001-of-00002.gguf",  # the first part, whatever the list's order
        ),
        (files("one%20model.gguf"), ["--file", f"{BASE}/one%20model.gguf={SHA}"], "one model.gguf"),
    ],
    ids=[
        "url", "url-split-gguf", "hf-file", "snapshot", "snapshot-include", "files-mlx",
        "files-split-gguf", "files-one-gguf",
    ],
)  # fmt: skip
def test_fetch_arguments_and_served_path_per_source(source, args, entry):
    assert fetch_source_args(source) == args
    folder = f"/models/{cache_key(source)}"
    assert model_path(source) == (f"{folder}/{entry}" if entry else folder)


def test_a_claim_is_neither_keyed_nor_fetched():
    claim = Source.model_validate({"pvc": {"claimName": "c", "path": "m/model.gguf"}})
    assert source_kind(claim) == "pvc"
    assert model_path(claim) == "/models/m/model.gguf"
    with pytest.raises(ValueError, match="not fetched"):
        fetch_source_args(claim)
