"""The connection itself: https that stays https, and servers that stall or trickle."""

from __future__ import annotations

import os
import time

import pytest
from fetch_runner import run_fetch, sha256

BODY = os.urandom(1024 * 1024 + 5)


def test_https_download_trusts_the_ca_in_ssl_cert_file(https_file_server, tls_ca, tmp_path):
    _, bundle = tls_ca
    url = https_file_server.add("/m.gguf", BODY)

    result = run_fetch(
        url, "--dest", str(tmp_path), "--sha256", sha256(BODY), env={"SSL_CERT_FILE": str(bundle)}
    )

    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.gguf").read_bytes() == BODY


def test_https_without_a_trusted_ca_fails(https_file_server, tmp_path):
    url = https_file_server.add("/m.gguf", BODY)
    result = run_fetch(url, "--dest", str(tmp_path), "--retries", "0")
    assert (result.returncode, result.summary["reason"]) == (1, "NetworkError")
    assert "CERTIFICATE_VERIFY_FAILED" in result.summary["error"]


def test_redirect_from_https_to_http_is_refused(https_file_server, file_server, tls_ca, tmp_path):
    _, bundle = tls_ca
    plain = file_server.add("/blobs/m.gguf", BODY)
    url = https_file_server.add("/m.gguf", b"", redirect_to=plain)

    result = run_fetch(url, "--dest", str(tmp_path), env={"SSL_CERT_FILE": str(bundle)})

    assert result.returncode == 1
    assert result.summary["event"] == "failed"
    assert result.summary["reason"] == "InsecureRedirect"
    assert f"from {url} to {plain}" in result.summary["error"]
    assert file_server.requests == [], "not one request goes out over plain http"
    assert len(https_file_server.requests) == 1, "a refusal is not retried"
    assert not (tmp_path / "m.gguf").exists()


def test_redirect_from_http_to_https_is_followed(https_file_server, file_server, tls_ca, tmp_path):
    _, bundle = tls_ca
    secure = https_file_server.add("/blobs/m.gguf", BODY)
    url = file_server.add("/m.gguf", b"", redirect_to=secure)
    result = run_fetch(url, "--dest", str(tmp_path), env={"SSL_CERT_FILE": str(bundle)})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m.gguf").read_bytes() == BODY


@pytest.mark.parametrize(
    ("chunk", "delay", "cause"),
    [
        # 64 KiB, then nothing for longer than the stall timeout.
        pytest.param(64 * 1024, 5.0, "ReadTimeout", id="silent"),
        # 2 KiB every 0.1 s: bytes keep coming, at 20 KiB/s, under the 100 KiB/s asked for.
        pytest.param(2 * 1024, 0.1, "bytes/s", id="trickle"),
    ],
)
def test_stalled_transfer_fails_then_the_next_run_resumes(
    file_server, tmp_path, chunk, delay, cause
):
    url = file_server.add("/m.gguf", BODY, chunk=chunk, delay_per_chunk=delay)
    stall_flags = ("--stall-timeout", "1", "--min-bytes-per-second", str(100 * 1024))

    started = time.monotonic()
    first = run_fetch(url, "--dest", str(tmp_path), "--retries", "1", *stall_flags)
    elapsed = time.monotonic() - started

    assert (first.returncode, first.summary["reason"]) == (1, "NetworkError")
    assert "stalled" in first.summary["error"] and cause in first.summary["error"]
    assert "after 2 attempts" in first.summary["error"], "a stall does not renew the retries"
    assert elapsed < 10, f"a stalled fetch took {elapsed:.1f}s to give up"
    kept = (tmp_path / "m.gguf.part").stat().st_size
    assert 0 < kept < len(BODY)

    # As the Job's next pod would: the server is healthy again and the part is resumed.
    file_server.files["/m.gguf"].delay_per_chunk = 0
    second = run_fetch(url, "--dest", str(tmp_path), "--sha256", sha256(BODY), *stall_flags)

    assert second.returncode == 0, second.stderr
    assert file_server.requests[-1][1]["Range"] == f"bytes={kept}-"
    assert (tmp_path / "m.gguf").read_bytes() == BODY


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EXO_FETCH_STALL_TIMEOUT": "0"}, "EXO_FETCH_STALL_TIMEOUT='0' is invalid"),
        ({"EXO_FETCH_MIN_BYTES_PER_SECOND": "fast"}, "EXO_FETCH_MIN_BYTES_PER_SECOND='fast'"),
    ],
)
def test_bad_stall_settings_in_the_environment_are_refused(tmp_path, env, message):
    result = run_fetch("http://127.0.0.1:9/m", "--dest", str(tmp_path), env=env)
    assert result.returncode == 2
    assert message in result.stderr


def test_stall_timeout_from_the_environment_applies(file_server, tmp_path):
    url = file_server.add("/m.gguf", BODY, chunk=1024, delay_per_chunk=5.0)
    result = run_fetch(
        url, "--dest", str(tmp_path), "--retries", "0", env={"EXO_FETCH_STALL_TIMEOUT": "0.5"}
    )
    assert (result.returncode, result.summary["reason"]) == (1, "NetworkError")
    assert "ReadTimeout" in result.summary["error"]
