"""Runs `exo-runtime fetch` in a child process, as the fetch Job does, and parses its output."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class FetchResult:
    returncode: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.stdout.splitlines() if line.strip()]

    @property
    def summary(self) -> dict:
        return self.lines[-1]


def run_fetch(
    *args: str, env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> FetchResult:
    """Run `exo-runtime fetch` in a child process, as the fetch Job does, with stdout a pipe."""
    inherited = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HF_ENDPOINT")}
    full_env = {**inherited, "PYTHONPATH": str(REPO_ROOT / "runtime"), **(env or {})}
    proc = subprocess.run(
        [*prefix, sys.executable, "-m", "exo_runtime", "fetch", *args, "--retry-backoff", "0.05"],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
    )
    return FetchResult(proc.returncode, proc.stdout, proc.stderr)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
