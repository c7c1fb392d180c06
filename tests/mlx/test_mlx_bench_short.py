"""The MLX benchmark in a short form: exo-runtime's MLX engine and mlx-lm itself (twice, the
second run its noise floor) on the converted Gemma, in turns, report their figures. Its full
run is `make bench-mlx`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.mlx

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_mlx_benchmark_reports_both_engines_round_by_round(gemma_mlx_dir: Path):
    # The fixture converts the GGUF into the folder the benchmark looks for, once.
    done = subprocess.run(
        [sys.executable, str(BENCH / "mlx_engines.py"), "--clients", "2", "--tokens", "4",
         "--rounds", "2", "--control"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    print(done.stdout)

    assert done.returncode == 0, done.stdout + done.stderr
    rows = re.findall(
        r"^\| (\d+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+) \| ([0-9.]+)\.\.([0-9.]+) \| (\d+) \|$",
        done.stdout,
        re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["2"], done.stdout
    for _clients, reference, ours, ratio, low, high, errors in rows:
        assert float(reference) > 0 and float(ours) > 0
        assert float(low) <= float(ratio) <= float(high)
        assert errors == "0"
    # --control: mlx-lm against itself, the run's noise floor.
    control = re.findall(
        r"^\| (\d+) \| \| ([0-9.]+) \| ([0-9.]+)\.\.([0-9.]+) \|$", done.stdout, re.MULTILINE
    )
    assert [row[0] for row in control] == ["2"], done.stdout
    for _clients, ratio, low, high in control:
        assert 0 < float(low) <= float(ratio) <= float(high)


@pytest.mark.parametrize(("flag", "value"), [("--clients", "1,x"), ("--clients", "0")])
def test_mlx_benchmark_refuses_a_bad_level_naming_the_flag(flag: str, value: str):
    done = subprocess.run(
        [sys.executable, str(BENCH / "mlx_engines.py"), flag, value],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: {flag}:" in done.stderr
