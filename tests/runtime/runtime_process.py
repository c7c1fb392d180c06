"""A real `exo-runtime serve` subprocess on 127.0.0.1, and how tests talk to it."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from fixtures.net import free_port

MODEL_NAME = "gemma3-test"
# Two threads: the runtime tier shares a 2-core machine with whatever else runs.
COMMON_ARGS = ("--threads", "2", "--model-name", MODEL_NAME)


@dataclass
class RuntimeProcess:
    """A running `exo-runtime serve`: its process, URL and the file its output goes to."""

    proc: subprocess.Popen
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"exo-runtime exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"exo-runtime not ready after {timeout}s:\n{self.log()}")

    def metric(self, name: str, labels: str = "") -> float:
        """The value of one sample of /metrics, e.g. metric("exo_runtime_requests_total",
        'outcome="ok"')."""
        wanted = f"{name}{{{labels}}}" if labels else name
        for line in httpx.get(f"{self.base_url}/metrics", timeout=5).text.splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[-1])
        raise AssertionError(f"{wanted} not in /metrics")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch(model: Path, log_dir: Path, *args: str) -> RuntimeProcess:
    """Start `exo-runtime serve --model MODEL ARGS...` on a free port; output goes to a file."""
    port = free_port()
    log_path = log_dir / "serve.log"
    command = [
        sys.executable,
        "-m",
        "exo_runtime",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        *COMMON_ARGS,
        *args,
    ]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    return RuntimeProcess(proc, f"http://127.0.0.1:{port}", log_path)


@contextmanager
def ready_runtime(model: Path, log_dir: Path, *args: str) -> Iterator[RuntimeProcess]:
    """`launch`, ready to answer, stopped on the way out (a module fixture's whole body)."""
    runtime = launch(model, log_dir, *args)
    try:
        runtime.wait_ready()
        yield runtime
    finally:
        runtime.stop()
