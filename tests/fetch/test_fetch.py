"""`exo-runtime fetch` against real HTTP servers on 127.0.0.1, each with the fault under test."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from fetch_runner import REPO_ROOT, run_fetch, sha256

BODY = os.urandom(3 * 1024 * 1024 + 123)
BODY_SHA = sha256(BODY)


def read_verified(dest: Path, name: str) -> dict:
    return json.loads((dest / f"{name}.verified.json").read_text())


def test_full_download_verifies_sha_and_records_it(file_server, tmp_path):
    url = file_server.add("/models/m.gguf", BODY)
    termination_log = tmp_path / "termination-log"
    termination_log.touch()

    result = run_fetch(
        url,
        "--dest",
        str(tmp_path / "cache"),
        "--sha256",
        BODY_SHA,
        "--termination-log",
        str(termination_log),
    )

    assert result.returncode == 0, result.stderr
    final = tmp_path / "cache" / "m.gguf"
    assert final.read_bytes() == BODY
    assert not (tmp_path / "cache" / "m.gguf.part").exists()
    assert read_verified(tmp_path / "cache", "m.gguf") == {
        "sha256": BODY_SHA,
        "size": len(BODY),
        "source": url,
    }
    summary = result.summary
    assert summary["event"] == "done"
    assert (summary["sha256"], summary["bytes"], summary["path"]) == (
        BODY_SHA,
        len(BODY),
        str(final),
    )
    assert json.loads(termination_log.read_text()) == summary


def test_file_name_override(file_server, tmp_path):
    url = file_server.add("/download?id=7", BODY[:1000])
    result = run_fetch(url, "--dest", str(tmp_path), "--filename", "model.gguf")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "model.gguf").read_bytes() == BODY[:1000]


def test_resumes_with_range_after_the_server_cuts_the_connection(file_server, tmp_path):
    half = len(BODY) // 2
    url = file_server.add("/m.gguf", BODY, cut_after=half, cuts_left=1)

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.gguf").read_bytes() == BODY
    ranges = [headers.get("Range") for _, headers in file_server.requests]
    assert ranges == [None, f"bytes={half}-"]
    assert "retrying" in result.stderr


def test_every_cut_that_made_progress_renews_the_retries(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY, cut_after=len(BODY) // 8, cuts_left=6)

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA, "--retries", "2")

    assert result.returncode == 0, result.stderr
    assert len(file_server.requests) == 7
    assert (tmp_path / "m.gguf").read_bytes() == BODY


def test_next_run_resumes_the_part_left_by_a_failed_run(file_server, tmp_path):
    half = len(BODY) // 2
    url = file_server.add("/m.gguf", BODY, cut_after=half, cuts_left=1)

    first = run_fetch(url, "--dest", str(tmp_path), "--retries", "0")
    assert first.returncode == 1
    assert first.summary["reason"] == "NetworkError"
    assert (tmp_path / "m.gguf.part").stat().st_size == half
    assert not (tmp_path / "m.gguf").exists()

    second = run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA)
    assert second.returncode == 0, second.stderr
    assert (tmp_path / "m.gguf").read_bytes() == BODY
    assert file_server.requests[-1][1].get("Range") == f"bytes={half}-"


def test_server_ignoring_range_restarts_from_zero(file_server, tmp_path):
    half = len(BODY) // 2
    url = file_server.add("/m.gguf", BODY, cut_after=half, cuts_left=1, honour_range=False)

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA)

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.gguf").read_bytes() == BODY
    assert file_server.requests[1][1].get("Range") == f"bytes={half}-"
    assert "starting from zero" in result.stderr


def test_part_from_another_source_is_not_resumed(file_server, tmp_path):
    (tmp_path / "m.gguf.part").write_bytes(b"stale bytes from an older source")
    (tmp_path / "m.gguf.part.json").write_text(json.dumps({"source": "http://127.0.0.1/old"}))
    url = file_server.add("/m.gguf", BODY)

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA)

    assert result.returncode == 0, result.stderr
    assert file_server.requests[0][1].get("Range") is None
    assert (tmp_path / "m.gguf").read_bytes() == BODY


def test_checksum_mismatch_fails_and_keeps_the_verified_file(file_server, tmp_path):
    old = file_server.add("/v1/m.gguf", b"the old verified model")
    assert run_fetch(old, "--dest", str(tmp_path), "--filename", "m.gguf").returncode == 0
    new = file_server.add("/v2/m.gguf", BODY)

    result = run_fetch(new, "--dest", str(tmp_path), "--filename", "m.gguf", "--sha256", "0" * 64)

    assert result.returncode == 1
    assert result.summary["event"] == "failed"
    assert result.summary["reason"] == "ChecksumMismatch"
    assert f"is {BODY_SHA}, expected {'0' * 64}" in result.summary["error"]
    assert f"error: m.gguf: sha256 of {new}" in result.stderr
    assert (tmp_path / "m.gguf").read_bytes() == b"the old verified model"
    assert read_verified(tmp_path, "m.gguf")["source"] == old
    assert not (tmp_path / "m.gguf.part").exists()
    progress = json.loads((tmp_path / ".m.gguf.progress.json").read_text())
    assert progress["state"] == "failed"
    assert "expected" in progress["error"]


def test_checksum_mismatch_on_a_first_download_leaves_no_file(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY)
    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", "f" * 64)
    assert (result.returncode, result.summary["reason"]) == (1, "ChecksumMismatch")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.gguf.progress.json"]


@pytest.mark.parametrize(
    ("status", "reason"), [(404, "NotFound"), (401, "Unauthorized"), (403, "Unauthorized")]
)
def test_http_refusals_fail_at_once_with_their_reason(file_server, tmp_path, status, reason):
    url = file_server.add("/m.gguf", b"", status=status)
    result = run_fetch(url, "--dest", str(tmp_path))
    assert result.returncode == 1
    assert result.summary["reason"] == reason
    assert str(status) in result.summary["error"]
    assert len(file_server.requests) == 1, "a refusal is not retried"
    assert not (tmp_path / "m.gguf").exists()


def test_server_errors_are_retried_then_reported(file_server, tmp_path):
    url = file_server.add("/m.gguf", b"", status=503)
    result = run_fetch(url, "--dest", str(tmp_path), "--retries", "2")
    assert (result.returncode, result.summary["reason"]) == (1, "NetworkError")
    assert len(file_server.requests) == 3
    assert "after 3 attempts" in result.summary["error"]


def test_unreachable_server_is_a_network_error(tmp_path):
    # Port 9 on loopback (discard) has no listener here: a real connection refusal.
    result = run_fetch("http://127.0.0.1:9/m.gguf", "--dest", str(tmp_path), "--retries", "1")
    assert (result.returncode, result.summary["reason"]) == (1, "NetworkError")
    assert "ConnectError" in result.summary["error"]


def test_complete_part_left_before_the_rename_is_verified_without_downloading(
    file_server, tmp_path
):
    url = file_server.add("/m.gguf", BODY)
    etag = file_server.files["/m.gguf"].etag
    # A run that was killed after the last byte but before the rename leaves all of it here.
    (tmp_path / "m.gguf.part").write_bytes(BODY)
    (tmp_path / "m.gguf.part.json").write_text(json.dumps({"source": url, "validator": etag}))

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA)

    assert result.returncode == 0, result.stderr
    assert file_server.requests[0][1]["Range"] == f"bytes={len(BODY)}-"
    assert file_server.requests[0][1]["If-Range"] == etag
    assert (tmp_path / "m.gguf").read_bytes() == BODY
    assert not (tmp_path / "m.gguf.part").exists()


def test_already_verified_file_is_not_downloaded_again(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY)
    assert run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA).returncode == 0
    file_server.requests.clear()

    again = run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA)

    assert again.returncode == 0, again.stderr
    assert file_server.requests == []
    assert again.summary["sha256"] == BODY_SHA
    assert "already verified" in again.stderr


def test_verified_file_with_another_sha_is_fetched_again(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY)
    assert run_fetch(url, "--dest", str(tmp_path)).returncode == 0
    (tmp_path / "m.gguf.verified.json").write_text(
        json.dumps({"sha256": "1" * 64, "size": len(BODY), "source": url})
    )
    file_server.requests.clear()
    assert run_fetch(url, "--dest", str(tmp_path), "--sha256", BODY_SHA).returncode == 0
    assert len(file_server.requests) == 1


@pytest.mark.parametrize(
    "source",
    ["ftp://example/m.gguf", "hf://only-org", "hf://org/../x", "/local/m.gguf", "http://h/"],
)
def test_bad_source_is_refused_with_the_accepted_forms(tmp_path, source):
    result = run_fetch(source, "--dest", str(tmp_path))
    assert result.returncode == 2
    assert result.summary["reason"] == "InvalidSource"


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MiB filesystem: writing past it fails with ENOSPC."""
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True
    )
    assert proc.returncode == 0, (
        f"the disk-full and read-only tests mount a tmpfs and need root (CAP_SYS_ADMIN): "
        f"{proc.stderr.decode().strip()}"
    )
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_full_disk_fails_clearly_and_keeps_the_verified_file(file_server, small_tmpfs):
    old = file_server.add("/old/m.gguf", b"small verified model")
    assert run_fetch(old, "--dest", str(small_tmpfs), "--filename", "m.gguf").returncode == 0
    new = file_server.add("/new/m.gguf", BODY)  # 3 MiB into 1 MiB

    result = run_fetch(new, "--dest", str(small_tmpfs), "--filename", "m.gguf")

    assert result.returncode == 1
    assert result.summary["reason"] == "DiskFull"
    assert "no space left" in result.summary["error"]
    assert (small_tmpfs / "m.gguf").read_bytes() == b"small verified model"
    assert read_verified(small_tmpfs, "m.gguf")["source"] == old


def test_read_only_destination_fails_clearly(file_server, small_tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    url = file_server.add("/m.gguf", BODY)

    result = run_fetch(url, "--dest", str(small_tmpfs))

    assert result.returncode == 1
    assert result.summary["reason"] == "ReadOnly"
    assert "Read-only file system" in result.summary["error"]
    assert file_server.requests == [], "nothing is downloaded that cannot be kept"


def test_destination_not_writable_by_the_user_is_read_only(file_server, tmp_path):
    dest = tmp_path / "owned-by-nobody"
    dest.mkdir(mode=0o755)
    os.chown(dest, 65534, 65534)
    url = file_server.add("/m.gguf", BODY)
    # Root may write anywhere: run the fetch without any capability, as a pod's user would be.
    no_capabilities = ("setpriv", "--inh-caps=-all", "--bounding-set=-all")

    result = run_fetch(url, "--dest", str(dest), prefix=no_capabilities)

    assert result.returncode == 1, result.stderr
    assert result.summary["reason"] == "ReadOnly"
    assert "Permission denied" in result.summary["error"]
    assert file_server.requests == []


def test_progress_lines_and_file_while_downloading(file_server, tmp_path):
    # 3 MiB in 48 chunks, 40 ms apart: about two seconds of download.
    url = file_server.add("/m.gguf", BODY, delay_per_chunk=0.04)

    result = run_fetch(url, "--dest", str(tmp_path), "--progress-interval", "0.3")

    assert result.returncode == 0, result.stderr
    progress = [line for line in result.lines if line["event"] == "progress"]
    assert len(progress) >= 4, result.stdout
    downloading = [p for p in progress if p["state"] == "downloading"]
    assert all(p["totalBytes"] == len(BODY) for p in downloading)
    byte_counts = [p["bytes"] for p in downloading]
    assert byte_counts == sorted(byte_counts) and 0 < byte_counts[-1] <= len(BODY)
    middle = [p for p in downloading if 0 < p["bytes"] < len(BODY)]
    assert middle and all(p["bytesPerSecond"] > 0 and p["etaSeconds"] >= 0 for p in middle)
    assert [p["state"] for p in progress][-2:] == ["verifying", "done"]
    assert result.summary["event"] == "done"
    final = json.loads((tmp_path / ".m.gguf.progress.json").read_text())
    assert final == {
        "state": "done",
        "bytes": len(BODY),
        "totalBytes": len(BODY),
        "bytesPerSecond": final["bytesPerSecond"],
        "etaSeconds": None,
        "error": None,
    }


def test_destination_that_is_a_file_fails_clearly(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY)
    (tmp_path / "taken").write_text("a file, not a folder")
    result = run_fetch(url, "--dest", str(tmp_path / "taken"))
    assert (result.returncode, result.summary["reason"]) == (1, "ReadOnly")
    assert "give a --dest that is a folder" in result.summary["error"]


def test_redirect_loop_fails_without_retrying(file_server, tmp_path):
    url = file_server.add("/loop", b"", redirect_to="/loop")
    result = run_fetch(url, "--dest", str(tmp_path), "--filename", "m.gguf")
    assert (result.returncode, result.summary["reason"]) == (1, "NetworkError")
    assert "redirects" in result.summary["error"].lower()


def test_terminal_gets_a_progress_bar_instead_of_json_lines(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY, delay_per_chunk=0.01)
    # A real pseudo-terminal as stdout, as when a person runs the command.
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "runtime")}
    proc = subprocess.run(
        [sys.executable, "-m", "exo_runtime", "fetch", url, "--dest", str(tmp_path)],
        stdout=follower, stderr=subprocess.PIPE, env=env, timeout=60,
    )  # fmt: skip
    os.close(follower)
    terminal = b""
    with contextlib.suppress(OSError):  # reading a closed pty ends with EIO
        while chunk := os.read(leader, 65536):
            terminal += chunk
    os.close(leader)

    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in terminal.decode().splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["done"]
    assert b"100%" in proc.stderr, "tqdm draws its bar on stderr"


def test_progress_file_can_be_placed_elsewhere(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY[:10])
    target = tmp_path / "status" / "progress.json"
    target.parent.mkdir()
    assert run_fetch(url, "--dest", str(tmp_path), "--progress-file", str(target)).returncode == 0
    assert json.loads(target.read_text())["state"] == "done"


def test_bad_sha256_argument_is_refused(tmp_path):
    result = run_fetch("http://127.0.0.1:9/m", "--dest", str(tmp_path), "--sha256", "xyz")
    assert result.returncode == 2
    assert "is not a sha256" in result.stderr
