"""`exo-runtime fetch hf://ORG/REPO[/FILE]` against a fake Hub on loopback (fake_hub.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fake_hub import sha256
from fetch_runner import REPO_ROOT, run_fetch

SHARD_1 = os.urandom(700 * 1024 + 11)
SHARD_2 = os.urandom(900 * 1024 + 7)
MLX_REPO = {
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "README.md": b"# tiny\n",
    "config.json": b'{"model_type": "gemma3_text", "hidden_size": 64}',
    "tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}',
    "tokenizer_config.json": b'{"add_bos_token": true}',
    "model-00001-of-00002.safetensors": SHARD_1,
    "model-00002-of-00002.safetensors": SHARD_2,
    "model.safetensors.index.json": b'{"weight_map": {}}',
}
PREFIX = "exo-runtime: load failed: cache not verified: "


def fetch(hub, source: str, dest: Path, *args: str, token: str | None = None):
    env = {"HF_ENDPOINT": hub.url, **({"HF_TOKEN": token} if token else {})}
    return run_fetch(source, "--dest", str(dest), *args, env=env)


def folder_record(dest: Path) -> dict:
    return json.loads((dest / ".verified.json").read_text())


def model_files(dest: Path) -> set[str]:
    """What a snapshot left in DEST, without the fetch's own records and progress."""
    return {
        str(p.relative_to(dest))
        for p in dest.rglob("*")
        if p.is_file() and not p.name.endswith((".verified.json", ".progress.json", ".part.json"))
    }


def test_snapshot_fetches_every_file_at_the_pinned_commit_and_records_the_folder(
    fake_hub, tmp_path
):
    commit = fake_hub.add_repo("acme/tiny-mlx", MLX_REPO)
    dest = tmp_path / "cache"

    result = fetch(fake_hub, "hf://acme/tiny-mlx", dest, "--progress-interval", "0")

    assert result.returncode == 0, result.stderr
    assert model_files(dest) == set(MLX_REPO)
    assert all((dest / path).read_bytes() == body for path, body in MLX_REPO.items())
    record = folder_record(dest)
    assert record["revision"] == commit
    assert record["request"] == {"source": "hf://acme/tiny-mlx", "include": []}
    assert sorted(record["files"], key=lambda f: f["path"]) == [
        {"path": path, "sha256": sha256(body), "size": len(body)}
        for path, body in sorted(MLX_REPO.items())
    ]
    summary = result.summary
    total = sum(len(body) for body in MLX_REPO.values())
    assert (summary["event"], summary["path"], summary["bytes"]) == ("done", str(dest), total)
    assert (summary["files"], summary["revision"]) == (len(MLX_REPO), commit)
    # One listing, as huggingface_hub's model_info(files_metadata=True) asks it, then each file
    # from its commit, never from the branch that might move meanwhile.
    listing, *resolves = [path for path, _ in fake_hub.requests]
    assert listing == "/api/models/acme/tiny-mlx/revision/main?blobs=true"
    assert sorted(resolves) == sorted(f"/acme/tiny-mlx/resolve/{commit}/{p}" for p in MLX_REPO)
    progress = [line for line in result.lines if line["event"] == "progress"]
    assert {p["totalBytes"] for p in progress if p["state"] == "downloading"} == {total}
    assert max(p["bytes"] for p in progress) == total


def test_token_goes_to_the_hub_and_never_to_its_cdn(fake_hub, tmp_path):
    fake_hub.add_repo("acme/tiny-mlx", MLX_REPO)

    result = fetch(fake_hub, "hf://acme/tiny-mlx@main", tmp_path, token="hf_secret")

    assert result.returncode == 0, result.stderr
    assert {h.get("Authorization") for _, h in fake_hub.requests} == {"Bearer hf_secret"}
    cdn = fake_hub.cdn.requests
    assert len(cdn) == 2 and all("Authorization" not in h for _, h in cdn)


def test_include_fetches_only_the_matching_files(fake_hub, tmp_path):
    fake_hub.add_repo("acme/tiny-mlx", MLX_REPO)
    includes = ("--include", "*.safetensors", "--include", "config.json", "--include", "tokenizer*")

    result = fetch(fake_hub, "hf://acme/tiny-mlx", tmp_path, *includes)

    assert result.returncode == 0, result.stderr
    wanted = {
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
    }
    assert model_files(tmp_path) == wanted
    assert {f["path"] for f in folder_record(tmp_path)["files"]} == wanted
    assert len(fake_hub.resolve_requests()) == len(wanted)


def test_restart_of_a_finished_snapshot_sends_no_request(fake_hub, tmp_path):
    fake_hub.add_repo("acme/tiny-mlx", MLX_REPO)
    assert fetch(fake_hub, "hf://acme/tiny-mlx", tmp_path).returncode == 0
    fake_hub.requests.clear()
    fake_hub.cdn.requests.clear()

    again = fetch(fake_hub, "hf://acme/tiny-mlx", tmp_path)

    assert again.returncode == 0, again.stderr
    assert (fake_hub.requests, fake_hub.cdn.requests) == ([], [])
    assert "already verified" in again.stderr
    assert again.summary["bytes"] == sum(len(body) for body in MLX_REPO.values())


def test_interrupted_snapshot_is_refused_by_serve_then_resumes_only_the_unfinished_file(
    fake_hub, tmp_path
):
    commit = fake_hub.add_repo("acme/tiny-mlx", MLX_REPO)
    half = len(SHARD_2) // 2
    shard_2 = fake_hub.cdn_file("acme/tiny-mlx", "model-00002-of-00002.safetensors")
    shard_2.cut_after, shard_2.cuts_left = half, 1

    first = fetch(fake_hub, "hf://acme/tiny-mlx", tmp_path, "--retries", "0")

    assert (first.returncode, first.summary["reason"]) == (1, "NetworkError")
    assert (tmp_path / "model-00002-of-00002.safetensors.part").stat().st_size == half
    assert (tmp_path / "model-00001-of-00002.safetensors").read_bytes() == SHARD_1
    assert not (tmp_path / ".verified.json").exists()
    serve = [sys.executable, "-m", "exo_runtime", "serve", "--model", str(tmp_path)]
    refused = subprocess.run(
        [*serve, "--require-verified"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT / "runtime")},
    )
    assert refused.returncode == 1
    assert f"{PREFIX}{tmp_path} has no .verified.json" in refused.stderr
    before = len(fake_hub.requests)
    fake_hub.cdn.requests.clear()

    second = fetch(fake_hub, "hf://acme/tiny-mlx", tmp_path)

    assert second.returncode == 0, second.stderr
    listing, *resolves = [path for path, _ in fake_hub.requests[before:]]
    assert listing.startswith("/api/models/acme/tiny-mlx/revision/main")
    assert [path.rpartition("/")[2] for path in resolves] == [
        "model-00002-of-00002.safetensors",  # the cut one, resumed
        "model.safetensors.index.json",  # the ones the first run never reached
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    assert [h.get("Range") for _, h in fake_hub.cdn.requests] == [f"bytes={half}-"]
    assert model_files(tmp_path) == set(MLX_REPO)
    assert folder_record(tmp_path)["revision"] == commit


def test_lfs_file_that_does_not_hash_to_the_listed_sha_fails_naming_it(fake_hub, tmp_path):
    fake_hub.add_repo("acme/tiny-mlx", MLX_REPO)
    # The CDN serves other bytes of the same length than the Hub lists for the shard.
    fake_hub.cdn_file("acme/tiny-mlx", "model-00001-of-00002.safetensors").change(
        os.urandom(len(SHARD_1))
    )

    result = fetch(fake_hub, "hf://acme/tiny-mlx", tmp_path)

    assert (result.returncode, result.summary["reason"]) == (1, "ChecksumMismatch")
    error = result.summary["error"]
    assert error.startswith("model-00001-of-00002.safetensors: sha256 of "), error
    assert f"expected {sha256(SHARD_1)}" in error
    assert not list(tmp_path.glob("model-00001-of-00002.safetensors*"))
    assert not (tmp_path / ".verified.json").exists()


@pytest.mark.parametrize("token", [None, "hf_wrong"], ids=["no-token", "wrong-token"])
def test_gated_repository_without_its_token_is_unauthorized(fake_hub, tmp_path, token):
    fake_hub.add_repo("acme/gated", MLX_REPO, gated_token="hf_granted")

    result = fetch(fake_hub, "hf://acme/gated", tmp_path, "--retries", "3", token=token)

    assert (result.returncode, result.summary["reason"]) == (1, "Unauthorized")
    error = result.summary["error"]
    assert "401" in error and "Access to model acme/gated is restricted" in error
    assert "HF_TOKEN" in error and "spec.source.huggingFace.tokenSecretRef" in error
    assert len(fake_hub.resolve_requests()) == 1, "a refusal is not retried"
    assert model_files(tmp_path) == set()


def test_gated_repository_with_its_token_is_fetched(fake_hub, tmp_path):
    fake_hub.add_repo("acme/gated", MLX_REPO, gated_token="hf_granted")
    result = fetch(fake_hub, "hf://acme/gated", tmp_path, token="hf_granted")
    assert result.returncode == 0, result.stderr
    assert model_files(tmp_path) == set(MLX_REPO)


GGUF_PARTS = {f"m-Q4-{i:05d}-of-00003.gguf": os.urandom(300 * 1024 + i) for i in (1, 2, 3)}


def gguf_parts_without(index: int) -> dict[str, bytes]:
    return {k: v for k, v in GGUF_PARTS.items() if not k.startswith(f"m-Q4-{index:05d}")}


@pytest.mark.parametrize(
    ("files", "includes", "reason", "words"),
    [
        pytest.param(
            {"README.md": b"# no weights", "config.json": b"{}"},
            (),
            "NoWeights",
            "holds no model weights",
            id="no-weights",
        ),
        pytest.param(MLX_REPO, ("*.safetensors",), "NoConfig", "no config.json", id="no-config"),
        pytest.param(
            gguf_parts_without(2),
            (),
            "MissingPart",
            "but not m-Q4-00002-of-00003.gguf",
            id="missing-part",
        ),
        pytest.param(
            {"m-Q4.gguf": b"GGUF4", "m-Q8.gguf": b"GGUF8"},
            (),
            "AmbiguousModel",
            "more than one model (m-Q4.gguf, m-Q8.gguf)",
            id="two-ggufs",
        ),
    ],
)
def test_selection_that_makes_no_model_is_refused_before_any_download(
    fake_hub, tmp_path, files, includes, reason, words
):
    fake_hub.add_repo("acme/repo", files)
    dest = tmp_path / "cache"
    flags = [arg for pattern in includes for arg in ("--include", pattern)]

    result = fetch(fake_hub, "hf://acme/repo", dest, *flags)

    assert (result.returncode, result.summary["reason"]) == (1, reason)
    assert words in result.summary["error"]
    assert len(fake_hub.requests) == 1, "only the listing"
    assert not dest.exists()


def test_split_gguf_file_brings_every_part_and_the_first_is_the_model(fake_hub, tmp_path):
    commit = fake_hub.add_repo("acme/m-GGUF", {**GGUF_PARTS, "README.md": b"#"})
    first = "m-Q4-00001-of-00003.gguf"

    result = fetch(fake_hub, f"hf://acme/m-GGUF/{first}@main", tmp_path, "--filename", first)

    assert result.returncode == 0, result.stderr
    assert model_files(tmp_path) == set(GGUF_PARTS)
    assert result.summary["path"] == str(tmp_path / first)
    assert result.summary["bytes"] == sum(len(b) for b in GGUF_PARTS.values())
    assert folder_record(tmp_path)["model"] == first
    assert folder_record(tmp_path)["revision"] == commit


def test_split_gguf_file_with_a_part_missing_on_the_hub_fails_naming_it(fake_hub, tmp_path):
    fake_hub.add_repo("acme/m-GGUF", gguf_parts_without(3))

    result = fetch(fake_hub, "hf://acme/m-GGUF/m-Q4-00001-of-00003.gguf", tmp_path)

    assert (result.returncode, result.summary["reason"]) == (1, "MissingPart")
    assert "not m-Q4-00003-of-00003.gguf" in result.summary["error"]
    assert fake_hub.resolve_requests() == []


def test_hub_file_is_verified_against_the_sha256_the_hub_lists(fake_hub, tmp_path):
    body = b"GGUF" + os.urandom(4096)
    commit = fake_hub.add_repo("acme/tiny-GGUF", {"sub/tiny.gguf": body})
    fake_hub.cdn_file("acme/tiny-GGUF", "sub/tiny.gguf").change(b"GGUF" + os.urandom(4096))

    result = fetch(fake_hub, "hf://acme/tiny-GGUF/sub/tiny.gguf@v1", tmp_path)
    assert (result.returncode, result.summary["reason"]) == (1, "NotFound")  # no branch v1

    result = fetch(fake_hub, f"hf://acme/tiny-GGUF/sub/tiny.gguf@{commit}", tmp_path)
    assert (result.returncode, result.summary["reason"]) == (1, "ChecksumMismatch")
    assert f"expected {sha256(body)}" in result.summary["error"]


def test_expected_sha256_that_the_hub_contradicts_fails_before_downloading(fake_hub, tmp_path):
    fake_hub.add_repo("acme/tiny-GGUF", {"tiny.gguf": b"GGUF" + os.urandom(64)})

    result = fetch(fake_hub, "hf://acme/tiny-GGUF/tiny.gguf", tmp_path, "--sha256", "a" * 64)

    assert (result.returncode, result.summary["reason"]) == (1, "ChecksumMismatch")
    assert "nothing was downloaded" in result.summary["error"]
    assert fake_hub.resolve_requests() == []


def test_single_hub_file_keeps_its_name_record_and_summary(fake_hub, tmp_path):
    body = b"GGUF" + os.urandom(2048)
    commit = fake_hub.add_repo("acme/tiny-GGUF", {"sub/tiny.gguf": body})

    result = fetch(fake_hub, "hf://acme/tiny-GGUF/sub/tiny.gguf", tmp_path)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "tiny.gguf").read_bytes() == body
    record = json.loads((tmp_path / "tiny.gguf.verified.json").read_text())
    assert record == {
        "sha256": sha256(body),
        "size": len(body),
        "source": f"hf://acme/tiny-GGUF/sub/tiny.gguf@{commit}",
    }
    assert (result.summary["sha256"], result.summary["path"]) == (
        sha256(body),
        str(tmp_path / "tiny.gguf"),
    )
    assert "Authorization" not in fake_hub.requests[0][1]


@pytest.mark.parametrize(
    "args",
    [
        ("hf://acme/repo", "--sha256", "a" * 64),
        ("hf://acme/repo", "--filename", "m.gguf"),
        ("hf://acme/repo/m.gguf", "--include", "*.gguf"),
        ("https://example/m.gguf", "--include", "*.gguf"),
    ],
    ids=["snapshot-sha256", "snapshot-filename", "file-include", "url-include"],
)
def test_options_that_do_not_fit_the_source_are_refused(tmp_path, args):
    result = run_fetch(*args, "--dest", str(tmp_path))
    assert (result.returncode, result.summary["reason"]) == (2, "InvalidSource")
