"""Runtime servers for the tests: the real `exo-runtime serve` in a subprocess on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from runtime_process import RuntimeProcess, launch, ready_runtime


@pytest.fixture
def start_runtime(
    gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., RuntimeProcess]]:
    """Start `exo-runtime serve` with extra arguments; every process is stopped at teardown."""
    started: list[RuntimeProcess] = []

    def start(*args: str, wait: bool = True) -> RuntimeProcess:
        runtime = launch(gemma_gguf, tmp_path_factory.mktemp("runtime"), *args)
        started.append(runtime)
        if wait:
            runtime.wait_ready()
        return runtime

    yield start
    for runtime in started:
        runtime.stop()


@pytest.fixture(scope="module")
def shared_runtime(
    gemma_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RuntimeProcess]:
    """One ready server for the tests that only send requests (8 slots, 512-token context)."""
    with ready_runtime(
        gemma_gguf, tmp_path_factory.mktemp("shared-runtime"), "--context-length", "512",
        "--parallel", "8",
    ) as runtime:  # fmt: skip
        yield runtime
