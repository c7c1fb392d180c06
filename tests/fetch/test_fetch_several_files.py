"""Models of several files from plain URLs: a split GGUF, and a list of `--file URL=SHA256`."""

from __future__ import annotations

import json
import os

import pytest
from fetch_runner import run_fetch, sha256

PARTS = {f"m-{i:05d}-of-00003.gguf": os.urandom(200 * 1024 + i) for i in (1, 2, 3)}
FIRST = "m-00001-of-00003.gguf"
CONFIG = b'{"model_type": "gemma3_text"}'
SHARDS = {f"model-{i:05d}-of-00002.safetensors": os.urandom(300 * 1024 + i) for i in (1, 2)}


def folder_record(dest) -> dict:
    return json.loads((dest / ".verified.json").read_text())


def test_split_gguf_url_brings_every_part_and_the_first_is_the_model(file_server, tmp_path):
    urls = {name: file_server.add(f"/q4/{name}", body) for name, body in PARTS.items()}

    result = run_fetch(urls[FIRST], "--dest", str(tmp_path), "--sha256", sha256(PARTS[FIRST]))

    assert result.returncode == 0, result.stderr
    assert all((tmp_path / name).read_bytes() == body for name, body in PARTS.items())
    assert result.summary["path"] == str(tmp_path / FIRST)
    assert result.summary["bytes"] == sum(len(b) for b in PARTS.values())
    assert [f["path"] for f in folder_record(tmp_path)["files"]] == sorted(PARTS)


def test_split_gguf_url_with_a_missing_part_fails_naming_it_and_keeps_the_others(
    file_server, tmp_path
):
    for name, body in PARTS.items():
        if not name.startswith("m-00002"):
            file_server.add(f"/q4/{name}", body)

    result = run_fetch(f"{file_server.url}/q4/{FIRST}", "--dest", str(tmp_path))

    assert (result.returncode, result.summary["reason"]) == (1, "MissingPart")
    assert (
        "part 2 of 3 of the split GGUF, m-00002-of-00003.gguf, is missing"
        in (result.summary["error"])
    )
    assert (tmp_path / FIRST).read_bytes() == PARTS[FIRST]  # verified, kept for the next run
    assert not (tmp_path / ".verified.json").exists()


def test_file_list_fetches_each_file_verified_against_its_sha(file_server, tmp_path):
    files = {"config.json": CONFIG, **SHARDS}
    entries = [
        arg
        for name, body in files.items()
        for arg in ("--file", f"{file_server.add(f'/mlx/{name}?sig=a=b', body)}={sha256(body)}")
    ]

    result = run_fetch(*entries, "--dest", str(tmp_path))

    assert result.returncode == 0, result.stderr
    assert all((tmp_path / name).read_bytes() == body for name, body in files.items())
    assert result.summary["path"] == str(tmp_path), "an MLX folder: the folder is the model"
    record = folder_record(tmp_path)
    assert record["model"] == "."
    assert [f["sha256"] for f in record["files"]] == [sha256(b) for b in files.values()]
    file_server.requests.clear()
    assert run_fetch(*entries, "--dest", str(tmp_path)).returncode == 0
    assert file_server.requests == [], "a finished list is not fetched again"


def test_file_list_entry_with_the_wrong_sha_fails_naming_the_file(file_server, tmp_path):
    config = file_server.add("/mlx/config.json", CONFIG)
    shard = file_server.add("/mlx/model.safetensors", SHARDS["model-00001-of-00002.safetensors"])

    result = run_fetch(
        "--file", f"{config}={sha256(CONFIG)}", "--file", f"{shard}={'b' * 64}",
        "--dest", str(tmp_path),
    )  # fmt: skip

    assert (result.returncode, result.summary["reason"]) == (1, "ChecksumMismatch")
    assert result.summary["error"].startswith(f"model.safetensors: sha256 of {shard} is ")
    assert not (tmp_path / ".verified.json").exists()


def test_file_list_without_config_is_refused_before_any_download(file_server, tmp_path):
    entries = [
        arg
        for name, body in SHARDS.items()
        for arg in ("--file", f"{file_server.add(f'/{name}', body)}={sha256(body)}")
    ]
    result = run_fetch(*entries, "--dest", str(tmp_path / "cache"))
    assert (result.returncode, result.summary["reason"]) == (1, "NoConfig")
    assert file_server.requests == []
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--file", "https://h/config.json"), "is not URL=SHA256"),
        (("--file", f"ftp://h/config.json={'a' * 64}"), "must be an http(s):// URL"),
        (("--file", f"https://h/a/x.gguf={'a' * 64}", "--file", f"https://h/b/x.gguf={'b' * 64}"),
         "two --file URLs end in the same file name, x.gguf"),
        (("https://h/x.gguf", "--file", f"https://h/y.gguf={'a' * 64}"), "give no SOURCE"),
        ((), "give a SOURCE, or the model's files as --file URL=SHA256"),
        (("https://h/m-00001-of-00002.gguf", "--filename", "m.gguf"), "cannot rename"),
    ],
    ids=["no-sha", "not-http", "same-name", "with-source", "nothing", "rename-split"],
)  # fmt: skip
def test_bad_file_lists_are_refused(tmp_path, args, message):
    result = run_fetch(*args, "--dest", str(tmp_path))
    assert result.returncode == 2
    assert message in result.stderr
