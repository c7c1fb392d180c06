"""`exo-runtime serve --require-verified`: only a model `exo-runtime fetch` verified is loaded."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fetch_runner import REPO_ROOT, run_fetch
from fixtures.net import free_port

PREFIX = "exo-runtime: load failed: cache not verified: "


def serve_command(model: Path, port: int, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "exo_runtime", "serve", "--model", str(model),
        "--port", str(port), "--threads", "2", *args,
    ]  # fmt: skip


def serve_env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "runtime"), **extra}


def gguf_without_record(tmp_path: Path, gemma_gguf: Path) -> Path:
    model = tmp_path / "cache" / "m.gguf"
    model.parent.mkdir()
    model.symlink_to(gemma_gguf)  # the real model, without the record a fetch writes
    return model


def _no_record(tmp_path: Path, gemma_gguf: Path) -> tuple[Path, str]:
    model = gguf_without_record(tmp_path, gemma_gguf)
    return model, f"{model} has no m.gguf.verified.json beside it"


def _record_of_another_size(tmp_path: Path, gemma_gguf: Path) -> tuple[Path, str]:
    model = gguf_without_record(tmp_path, gemma_gguf)
    record = {"sha256": "0" * 64, "size": 1234, "source": "https://example/m.gguf"}
    (model.parent / "m.gguf.verified.json").write_text(json.dumps(record))
    size = gemma_gguf.stat().st_size
    return model, f"{model} holds {size} bytes but m.gguf.verified.json records 1234"


def _broken_record(tmp_path: Path, gemma_gguf: Path) -> tuple[Path, str]:
    model = gguf_without_record(tmp_path, gemma_gguf)
    (model.parent / "m.gguf.verified.json").write_text('{"sha256": ')
    return model, f"{model.parent / 'm.gguf.verified.json'} is not a readable record"


def _missing_file(tmp_path: Path, _gemma_gguf: Path) -> tuple[Path, str]:
    model = tmp_path / "cache" / "m.gguf"
    return model, f"{model} does not exist"


def _mlx_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "mlx-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    return folder


def _folder_with_records_of_each_file_only(tmp_path: Path, _gemma_gguf: Path) -> tuple[Path, str]:
    # What a fetch stopped half way leaves: each finished file has its record, not the folder.
    folder = _mlx_folder(tmp_path)
    for name, size in (("config.json", 2), ("model.safetensors", 16)):
        (folder / f"{name}.verified.json").write_text(json.dumps({"size": size}))
    return folder, f"{folder} has no .verified.json: its fetch has not finished"


def _folder_record_of_a_file_cut_short(tmp_path: Path, _gemma_gguf: Path) -> tuple[Path, str]:
    folder = _mlx_folder(tmp_path)
    files = [{"path": "config.json", "size": 2}, {"path": "model.safetensors", "size": 32}]
    (folder / ".verified.json").write_text(json.dumps({"files": files}))
    return folder, f"{folder / 'model.safetensors'} holds 16 bytes but .verified.json records 32"


def _split_gguf_without_the_folder_record(tmp_path: Path, gemma_gguf: Path) -> tuple[Path, str]:
    model = gguf_without_record(tmp_path, gemma_gguf).with_name("m-00001-of-00002.gguf")
    (model.parent / "m.gguf").rename(model)
    record = {"sha256": "0" * 64, "size": gemma_gguf.stat().st_size, "source": "https://h/m"}
    (model.parent / f"{model.name}.verified.json").write_text(json.dumps(record))
    return model, f"{model.parent} has no .verified.json"


def _split_gguf_part_not_in_the_record(tmp_path: Path, gemma_gguf: Path) -> tuple[Path, str]:
    model = gguf_without_record(tmp_path, gemma_gguf).with_name("m-00001-of-00002.gguf")
    (model.parent / "m.gguf").rename(model)
    files = [{"path": model.name, "size": gemma_gguf.stat().st_size}]
    (model.parent / ".verified.json").write_text(json.dumps({"files": files}))
    return model, f"{model.parent / '.verified.json'} does not list m-00002-of-00002.gguf"


@pytest.mark.parametrize(
    ("make_model", "switch"),
    [
        (_no_record, "flag"),
        (_no_record, "env"),
        (_record_of_another_size, "flag"),
        (_broken_record, "flag"),
        (_missing_file, "flag"),
        (_folder_with_records_of_each_file_only, "flag"),
        (_folder_record_of_a_file_cut_short, "flag"),
        (_split_gguf_without_the_folder_record, "flag"),
        (_split_gguf_part_not_in_the_record, "flag"),
    ],
    ids=[
        "no-record",
        "no-record-env",
        "other-size",
        "broken-record",
        "no-file",
        "folder-unfinished",
        "folder-file-cut",
        "split-unfinished",
        "split-part-unlisted",
    ],
)
def test_serve_refuses_a_model_without_an_intact_record(gemma_gguf, tmp_path, make_model, switch):
    model, reason = make_model(tmp_path, gemma_gguf)
    flag = ("--require-verified",) if switch == "flag" else ()
    env = serve_env(EXO_REQUIRE_VERIFIED="true") if switch == "env" else serve_env()

    proc = subprocess.run(
        serve_command(model, free_port(), *flag),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )

    assert proc.returncode == 1, proc.stderr
    failures = [line for line in proc.stderr.splitlines() if "load failed" in line]
    assert len(failures) == 1, proc.stderr
    assert failures[0].startswith(PREFIX + reason), failures[0]


def wait_ready(proc: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"not ready in 90 s:\n{log.read_text()}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)


@pytest.fixture(scope="session")
def split_gemma(gemma_gguf, tmp_path_factory) -> list[Path]:
    """The real model split in 3 parts (about 40 s of the gguf package's parsing, once)."""
    from gguf_split import split_gguf

    return split_gguf(gemma_gguf, tmp_path_factory.mktemp("split") / "gemma.gguf", 3)


@pytest.mark.runtime
def test_serve_loads_a_split_gguf_fetched_from_its_first_part_and_answers(
    file_server, split_gemma, tmp_path
):
    urls = [
        file_server.add(f"/q4/{part.name}", part.read_bytes(), chunk=1 << 20)
        for part in split_gemma
    ]
    dest = tmp_path / "cache"
    fetched = run_fetch(urls[0], "--dest", str(dest))
    assert fetched.returncode == 0, fetched.stderr
    assert sorted(p.name for p in dest.glob("*.gguf")) == [p.name for p in split_gemma]
    port = free_port()
    model = dest / split_gemma[0].name
    command = serve_command(model, port, "--require-verified", "--model-name", "gemma")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=serve_env())
    try:
        wait_ready(proc, port, log)
        answer = httpx.post(
            f"http://127.0.0.1:{port}/v1/completions",
            json={"model": "gemma", "prompt": "The capital of France is", "max_tokens": 8},
            timeout=60,
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert answer.status_code == 200, answer.text
    assert answer.json()["choices"][0]["text"].strip(), "llama.cpp loaded every part and answers"


@pytest.mark.runtime
def test_serve_loads_a_model_fetched_from_a_server_and_gets_ready(
    file_server, gemma_gguf, tmp_path
):
    body = gemma_gguf.read_bytes()
    url = file_server.add("/gemma.gguf", body, chunk=1 << 20)
    dest = tmp_path / "cache"
    fetched = run_fetch(url, "--dest", str(dest), "--sha256", hashlib.sha256(body).hexdigest())
    assert fetched.returncode == 0, fetched.stderr
    port = free_port()
    command = serve_command(dest / "gemma.gguf", port, "--require-verified")
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=serve_env())
    try:
        wait_ready(proc, port, log)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "load failed" not in log.read_text()
