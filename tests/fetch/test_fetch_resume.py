"""Resuming only the version the partial file came from: If-Range, or start over."""

from __future__ import annotations

import json
import os

import pytest
from fetch_runner import run_fetch, sha256

OLD = os.urandom(2 * 1024 * 1024 + 7)
NEW = os.urandom(2 * 1024 * 1024 + 911)
HALF = len(OLD) // 2
LAST_MODIFIED = "Tue, 01 Apr 2025 10:00:00 GMT"


@pytest.mark.parametrize(
    ("validators", "changed"),
    [
        pytest.param({}, {}, id="etag"),
        pytest.param(
            {"etag": None, "last_modified": LAST_MODIFIED},
            {"etag": None, "last_modified": "Wed, 02 Apr 2025 10:00:00 GMT"},
            id="last-modified",
        ),
    ],
)
def test_file_changed_between_tries_is_downloaded_whole_not_spliced(
    file_server, tmp_path, validators, changed
):
    url = file_server.add("/m.gguf", OLD, cut_after=HALF, cuts_left=1, **validators)
    first = run_fetch(url, "--dest", str(tmp_path), "--retries", "0")
    assert (first.returncode, first.summary["reason"]) == (1, "NetworkError")
    assert (tmp_path / "m.gguf.part").stat().st_size == HALF
    old_validator = validators.get("last_modified") or file_server.files["/m.gguf"].etag
    part_record = json.loads((tmp_path / "m.gguf.part.json").read_text())
    assert part_record == {"source": url, "validator": old_validator}

    # A new version is published at the same URL, with new validators.
    file_server.files["/m.gguf"].change(NEW, **changed)
    second = run_fetch(url, "--dest", str(tmp_path), "--sha256", sha256(NEW))

    assert second.returncode == 0, second.stderr
    resume = file_server.requests[-1][1]
    assert (resume["Range"], resume["If-Range"]) == (f"bytes={HALF}-", old_validator)
    assert len(file_server.requests) == 2, "the 200 for the new version is used, not re-asked"
    assert "starting from zero" in second.stderr
    assert (tmp_path / "m.gguf").read_bytes() == NEW
    assert json.loads((tmp_path / "m.gguf.verified.json").read_text())["sha256"] == sha256(NEW)


def test_unchanged_file_resumes_with_its_strong_etag(file_server, tmp_path):
    url = file_server.add("/m.gguf", OLD, cut_after=HALF, cuts_left=1)

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", sha256(OLD))

    assert result.returncode == 0, result.stderr
    etag = file_server.files["/m.gguf"].etag
    sent = [(h.get("Range"), h.get("If-Range")) for _, h in file_server.requests]
    assert sent == [(None, None), (f"bytes={HALF}-", etag)]
    assert (tmp_path / "m.gguf").read_bytes() == OLD


def test_weak_etag_falls_back_to_last_modified(file_server, tmp_path):
    url = file_server.add(
        "/m.gguf", OLD, cut_after=HALF, cuts_left=1, etag='W/"v1"', last_modified=LAST_MODIFIED
    )

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", sha256(OLD))

    assert result.returncode == 0, result.stderr
    assert file_server.requests[1][1]["If-Range"] == LAST_MODIFIED


def test_server_without_validators_is_never_sent_a_bare_range(file_server, tmp_path):
    url = file_server.add("/m.gguf", OLD, cut_after=HALF, cuts_left=2, etag=None)

    # Within one run (a retry), then across runs (the part left by a failed run).
    first = run_fetch(url, "--dest", str(tmp_path), "--retries", "1")
    assert first.returncode == 1
    second = run_fetch(url, "--dest", str(tmp_path), "--sha256", sha256(OLD))

    assert second.returncode == 0, second.stderr
    assert [h.get("Range") for _, h in file_server.requests] == [None, None, None]
    assert "no ETag or Last-Modified" in first.stderr
    assert (tmp_path / "m.gguf").read_bytes() == OLD


def test_part_recorded_without_a_validator_starts_over(file_server, tmp_path):
    # What an older fetcher left: the part's source, but not which version it holds.
    url = file_server.add("/m.gguf", OLD)
    (tmp_path / "m.gguf.part").write_bytes(NEW[:HALF])
    (tmp_path / "m.gguf.part.json").write_text(json.dumps({"source": url}))

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", sha256(OLD))

    assert result.returncode == 0, result.stderr
    assert "Range" not in file_server.requests[0][1]
    assert (tmp_path / "m.gguf").read_bytes() == OLD


def test_206_of_another_version_is_not_spliced(file_server, tmp_path):
    # A server that ignores If-Range but answers the Range with its new version's bytes.
    url = file_server.add("/m.gguf", OLD, cut_after=HALF, cuts_left=1)
    assert run_fetch(url, "--dest", str(tmp_path), "--retries", "0").returncode == 1
    served = file_server.files["/m.gguf"]
    served.change(NEW)
    served.matches = lambda _validator: True

    result = run_fetch(url, "--dest", str(tmp_path), "--sha256", sha256(NEW))

    assert result.returncode == 0, result.stderr
    assert "different version" in result.stderr
    assert (tmp_path / "m.gguf").read_bytes() == NEW
