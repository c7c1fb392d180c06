"""`fetch --prune`: the other cache folders go once the new file is verified; live ones stay."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from fetch_runner import REPO_ROOT, run_fetch, sha256

BODY = os.urandom(512 * 1024 + 3)
HOUR_AGO = time.time() - 3600


def old_cache_dir(cache: Path, name: str, files: dict[str, bytes]) -> Path:
    """A folder an earlier fetch left, last written an hour ago."""
    folder = cache / name
    folder.mkdir(parents=True)
    for file_name, content in files.items():
        (folder / file_name).write_bytes(content)
        os.utime(folder / file_name, (HOUR_AGO, HOUR_AGO))
    return folder


def progress(state: str) -> bytes:
    return json.dumps({"state": state, "bytes": 1, "totalBytes": 2}).encode()


def test_prune_removes_old_cache_dirs_and_keeps_the_current_one(file_server, tmp_path):
    cache = tmp_path / "models"
    complete = old_cache_dir(
        cache,
        "0a1b2c3d4e5f6a7b",
        {
            "old.gguf": b"GGUF old model",
            "old.gguf.verified.json": json.dumps({"sha256": "0" * 64, "size": 14}).encode(),
            ".old.gguf.progress.json": progress("done"),
        },
    )
    partial = old_cache_dir(
        cache,
        "1b2c3d4e5f6a7b8c",
        {
            "other.gguf.part": b"half of it",
            "other.gguf.part.json": b'{"source": "http://127.0.0.1/other.gguf"}',
            ".other.gguf.progress.json": progress("downloading"),
        },
    )
    # Not what a fetch writes: a filesystem's own folder, someone's notes. Never touched.
    (cache / "lost+found").mkdir()
    (cache / "README.txt").write_text("kept")
    url = file_server.add("/m.gguf", BODY)
    dest = cache / "2c3d4e5f6a7b8c9d"

    result = run_fetch(url, "--dest", str(dest), "--sha256", sha256(BODY), "--prune")

    assert result.returncode == 0, result.stderr
    assert result.summary["event"] == "done"
    assert not complete.exists() and not partial.exists()
    assert sorted(p.name for p in cache.iterdir()) == [
        "2c3d4e5f6a7b8c9d",
        "README.txt",
        "lost+found",
    ]
    assert (dest / "m.gguf").read_bytes() == BODY
    assert f"pruned {complete}" in result.stderr


def test_prune_also_runs_when_the_file_was_already_verified(file_server, tmp_path):
    cache = tmp_path / "models"
    url = file_server.add("/m.gguf", BODY)
    dest = cache / "current"
    assert run_fetch(url, "--dest", str(dest)).returncode == 0
    stale = old_cache_dir(cache, "stale", {"m.gguf.part": b"x", "m.gguf.part.json": b"{}"})

    result = run_fetch(url, "--dest", str(dest), "--prune")

    assert result.returncode == 0, result.stderr
    assert "already verified" in result.stderr
    assert not stale.exists()


def test_without_prune_nothing_else_is_removed(file_server, tmp_path):
    cache = tmp_path / "models"
    stale = old_cache_dir(cache, "stale", {"m.gguf.part": b"x", "m.gguf.part.json": b"{}"})
    url = file_server.add("/m.gguf", BODY)
    assert run_fetch(url, "--dest", str(cache / "current")).returncode == 0
    assert stale.exists()


def test_failed_fetch_prunes_nothing(file_server, tmp_path):
    cache = tmp_path / "models"
    stale = old_cache_dir(cache, "stale", {"m.gguf.part": b"x", "m.gguf.part.json": b"{}"})
    url = file_server.add("/m.gguf", BODY)

    result = run_fetch(url, "--dest", str(cache / "current"), "--sha256", "0" * 64, "--prune")

    assert (result.returncode, result.summary["reason"]) == (1, "ChecksumMismatch")
    assert stale.exists()


def test_a_live_fetch_in_another_cache_dir_is_left_alone(file_server, tmp_path):
    cache = tmp_path / "models"
    # A real fetch into a sibling that takes a few seconds: 8 chunks of 64 KiB, 0.75 s apart.
    slow_url = file_server.add("/slow.gguf", BODY, delay_per_chunk=0.75)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "runtime")}
    live = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "fetch", slow_url, "--dest", str(cache / "live")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        _wait_for(lambda: (cache / "live" / "slow.gguf.part").exists())
        url = file_server.add("/m.gguf", BODY)

        result = run_fetch(url, "--dest", str(cache / "current"), "--prune")

        assert result.returncode == 0, result.stderr
        assert f"keeping {cache / 'live'}" in result.stderr
        assert live.wait(timeout=60) == 0, live.stderr.read()
    finally:
        live.kill()
        live.wait()
    assert (cache / "live" / "slow.gguf").read_bytes() == BODY


def test_a_locked_cache_dir_is_kept_even_when_its_files_are_old(file_server, tmp_path):
    # A fetch hashing a large partial file before resuming writes nothing for minutes.
    cache = tmp_path / "models"
    busy = old_cache_dir(cache, "busy", {"m.gguf.part": b"x" * 10, "m.gguf.part.json": b"{}"})
    url = file_server.add("/m.gguf", BODY)
    fd = os.open(busy, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        result = run_fetch(url, "--dest", str(cache / "current"), "--prune")
    finally:
        os.close(fd)

    assert result.returncode == 0, result.stderr
    assert busy.exists()
    assert f"keeping {busy}: a fetch holds its lock" in result.stderr


def test_a_partial_file_written_lately_is_kept_without_a_lock(file_server, tmp_path):
    # A fetch on another node: its lock may not show over a network filesystem.
    cache = tmp_path / "models"
    recent = cache / "recent"
    recent.mkdir(parents=True)
    (recent / "m.gguf.part").write_bytes(b"fresh bytes")
    url = file_server.add("/m.gguf", BODY)

    result = run_fetch(url, "--dest", str(cache / "current"), "--prune")

    assert result.returncode == 0, result.stderr
    assert recent.exists()
    assert "a fetch wrote there lately" in result.stderr


def _wait_for(condition, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_sigterm_ends_a_fetch_at_once_and_keeps_its_partial_file(file_server, tmp_path):
    # A fetch Job's pod deleted mid-download: the fetch runs as its container's PID 1, which
    # ignores SIGTERM unless it handles it, so exiting 143 (not dying by the signal) shows that.
    slow_url = file_server.add("/slow.gguf", BODY, delay_per_chunk=0.75)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "runtime")}
    fetch = subprocess.Popen(
        [sys.executable, "-m", "exo_runtime", "fetch", slow_url, "--dest", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        _wait_for(lambda: (tmp_path / "slow.gguf.part").exists())
        fetch.terminate()
        assert fetch.wait(timeout=5) == 143, fetch.stderr.read()
    finally:
        fetch.kill()
        fetch.wait()
    assert (tmp_path / "slow.gguf.part").exists()
    assert not (tmp_path / "slow.gguf").exists()
