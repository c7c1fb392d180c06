"""The serving benchmark and the soak, in a short form: they run against a real exo-runtime
and report. Their full runs (`make bench-serving`, `make bench-soak`) take many minutes, and
the llama-server builds they compare with take minutes each, so here exo-runtime stands alone."""

from __future__ import annotations

import itertools
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.runtime

BENCH = Path(__file__).resolve().parents[2] / "bench"


def run_bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
    )
    print(done.stdout)
    return done


def table_rows(output: str) -> list[list[str]]:
    """The cells of each row of the markdown tables in `output`, headers and rules left out."""
    rows = []
    for line in output.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] not in ("prompt", "---", "window (s)"):
            rows.append(cells)
    return rows


def test_serving_benchmark_prompts_share_no_token_a_prefix_cache_could_reuse():
    # llama-server and llama-cpp-python reuse any shared prefix; exo-runtime's cache only one of
    # 16 tokens or more: a shared start would time one contender's prefill shorter than another's.
    sys.path.insert(0, str(BENCH))
    try:
        import serving
    finally:
        sys.path.remove(str(BENCH))
    from llama_cpp import Llama

    vocab = Llama(str(serving.default_model()), vocab_only=True, verbose=False)
    prompts = [serving.counting_prompt(number, 5) for number in range(30)]
    prompts += [serving.next_prompt() for _ in range(10)]
    tokens = [vocab.tokenize(prompt.encode(), add_bos=True) for prompt in prompts]
    for earlier, later in itertools.pairwise(tokens):
        assert earlier[1] != later[1], (vocab.detokenize(earlier), vocab.detokenize(later))


def test_serving_benchmark_reports_each_level_of_exo_runtime_and_the_in_process_reference():
    done = run_bench(
        "serving.py", "--without-llama-server", "--clients", "1,2", "--prompts", "short",
        "--tokens", "8", "--rounds", "2", "--control",
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    assert "exo-runtime: llama-cpp-python" in done.stdout
    assert "cpu_variant" in done.stdout
    results = {
        (row[1], row[2]): row
        for row in table_rows(done.stdout)
        if len(row) == 11  # the results table: prompt, clients, contender, build, 7 figures
    }
    assert set(results) == {
        ("1", "llama-cpp-python in process"),
        ("1", "exo-runtime"),
        ("1", "exo-runtime (control)"),
        ("2", "exo-runtime"),
        ("2", "exo-runtime (control)"),
    }
    # Over two rounds: the lone client sends 3 requests in a row, each of 2 clients one, and the
    # in-process reference streams twice.
    requests = {key: int(row[9]) for key, row in results.items()}
    assert requests == {
        ("1", "llama-cpp-python in process"): 4,
        ("1", "exo-runtime"): 6,
        ("1", "exo-runtime (control)"): 6,
        ("2", "exo-runtime"): 4,
        ("2", "exo-runtime (control)"): 4,
    }
    for row in results.values():
        aggregate, ttft_p50, ttft_p99, itl_p50, itl_p99, _, errors = row[4:]
        assert float(aggregate) > 0 and errors == "0", row
        assert 0 < float(ttft_p50) <= float(ttft_p99), row
        assert 0 < float(itl_p50) <= float(itl_p99), row
    # Two rounds, each paired with its own: the ratio's spread over them is printed beside it.
    assert re.search(
        r"\| short \| 1 \| llama-cpp-python in process \| [0-9.]+ \| [0-9.]+\.\.[0-9.]+ "
        r"\| >= 0.95",
        done.stdout,
    )
    # The control is compared with its twin only: the noise floor, one line per level.
    ratio_table = done.stdout.split("exo-runtime vs")[1].split("\n\n")[0]
    assert "(control)" not in ratio_table
    floor = re.findall(
        r"^\| short \| ([12]) \| \| [0-9.]+ \| [0-9.]+\.\.[0-9.]+ \| [-+][0-9.]+ \|",
        done.stdout,
        re.MULTILINE,
    )
    assert floor == ["1", "2"], done.stdout
    assert "exo-runtime errors: 0" in done.stdout


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--clients", "4,x"), ("--clients", "0"), ("--rounds", "0"), ("--prompts", "huge")],
)
def test_serving_benchmark_refuses_a_bad_level_naming_the_flag(flag: str, value: str):
    done = run_bench("serving.py", "--without-llama-server", flag, value)

    assert done.returncode == 2, done.stdout + done.stderr
    assert f"error: {flag}:" in done.stderr


def test_soak_allows_only_429_with_retry_after_and_leaves_no_sequence_behind():
    # 6 clients for 2 slots and a queue of 2: two are refused from the first moment.
    done = run_bench(
        "soak.py", "--clients", "6", "--parallel", "2", "--max-queue", "2", "--seconds", "3",
        "--disconnect-seconds", "3", "--tokens", "8", "--window", "3", "--sample-every", "0.5",
    )  # fmt: skip

    assert done.returncode == 0, done.stdout + done.stderr
    refused = re.search(r"(\d+) x 429 with Retry-After; others: none", done.stdout)
    assert refused and int(refused.group(1)) >= 2, done.stdout
    hang_ups = re.search(r"(\d+) hang-ups", done.stdout)
    assert hang_ups and int(hang_ups.group(1)) > 0, done.stdout
    assert re.search(r"resident memory MiB: start \d+, warm \d+, peak \d+, end \d+", done.stdout)
    assert "no leaked sequence: ok (active sequences and queue at 0" in done.stdout
    assert "a new request then completes" in done.stdout
