"""The cache key: one directory per source and checksum."""

from _models import SHA
from exo_operator.cache import cache_key, model_filename, model_path, source_uri
from exo_operator.model import Source


def hf(revision="main", sha=None):
    return Source.model_validate(
        {
            "huggingFace": {"repo": "org/repo", "file": "dir/m.gguf", "revision": revision},
            "sha256": sha,
        }
    )


def test_same_source_same_key_across_restarts():
    assert cache_key(hf()) == cache_key(hf())
    assert len(cache_key(hf())) == 16


def test_changed_revision_or_checksum_fetches_into_a_new_dir():
    assert cache_key(hf("v1")) != cache_key(hf("v2"))
    assert cache_key(hf(sha=SHA)) != cache_key(hf())
    assert cache_key(hf(sha=SHA)) == cache_key(hf(sha=SHA.upper()))


def test_uri_and_file_name():
    assert source_uri(hf("v1")) == "hf://org/repo/dir/m.gguf@v1"
    assert model_filename(hf()) == "m.gguf"
    url = Source(url="https://h.example/p/q.gguf?download=1")
    assert model_filename(url) == "q.gguf"
    assert model_filename(Source(url="https://h.example/")) == "model.gguf"
    assert model_path(url) == f"/models/{cache_key(url)}/q.gguf"
