"""The portable build picks the CPU kernels of the machine it runs on, and says which."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

import httpx
import pytest
from runtime_process import RuntimeProcess

pytestmark = pytest.mark.runtime

# The /proc/cpuinfo flags each x86 variant of ggml's CPU backend is compiled for
# (ggml/src/CMakeLists.txt, GGML_CPU_ALL_VARIANTS).
_HASWELL = {"sse4_2", "avx", "f16c", "fma", "avx2", "bmi2"}
_AVX512 = {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"}
X86_VARIANTS = {
    "x64": set(),
    "sse42": {"sse4_2"},
    "sandybridge": {"sse4_2", "avx"},
    "ivybridge": {"sse4_2", "avx", "f16c"},
    "piledriver": {"sse4_2", "avx", "f16c", "fma"},
    "haswell": _HASWELL,
    "skylakex": _HASWELL | _AVX512,
    "cannonlake": _HASWELL | _AVX512 | {"avx512vbmi"},
    "cascadelake": _HASWELL | _AVX512 | {"avx512_vnni"},
    "icelake": _HASWELL | _AVX512 | {"avx512vbmi", "avx512_vnni"},
    "cooperlake": _HASWELL | _AVX512 | {"avx512_vnni", "avx512_bf16"},
    "zen4": _HASWELL | _AVX512 | {"avx512vbmi", "avx512_vnni", "avx512_bf16"},
    "alderlake": _HASWELL | {"avx_vnni"},
    "sapphirerapids": _HASWELL
    | _AVX512
    | {"avx512vbmi", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"},
}


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_the_runtime_names_the_cpu_backend_it_loaded(shared_runtime: RuntimeProcess) -> None:
    (model,) = httpx.get(f"{shared_runtime.base_url}/v1/models").json()["data"]
    line = re.search(r"llama\.cpp CPU backend: (\S+) \((.+)\)", shared_runtime.log())
    assert line, shared_runtime.log()
    # The backend came from the wheel's own lib folder, loaded by the runtime (GGML_BACKEND_DL).
    assert Path(line.group(2)).name.startswith("libggml-cpu"), line.group(0)
    assert line.group(1) == (model["cpu_variant"] or "built-in")


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the variant table is x86's")
def test_a_build_with_every_cpu_variant_runs_the_best_this_cpu_supports(
    shared_runtime: RuntimeProcess,
) -> None:
    (model,) = httpx.get(f"{shared_runtime.base_url}/v1/models").json()["data"]
    variant, flags = model["cpu_variant"], cpu_flags()
    if variant is None:
        # Only a wheel built with LLAMA_CPU_VARIANTS="" (scripts/wheelhouse.sh) has one backend.
        assert os.environ.get("LLAMA_CPU_VARIANTS") == "", "the wheel has no CPU variants"
        return
    supported = {name for name, needs in X86_VARIANTS.items() if needs <= flags}
    assert variant in supported, f"{variant} needs {X86_VARIANTS.get(variant)}; CPU has {flags}"
    # Never a lesser variant than this CPU can run: on an AVX2 machine, at least haswell's.
    assert X86_VARIANTS[variant] >= max(
        (X86_VARIANTS[name] for name in supported if X86_VARIANTS[name] <= _HASWELL),
        key=len,
    )
    assert f"llama.cpp CPU backend: {variant} (" in shared_runtime.log()
    assert f"libggml-cpu-{variant}.so" in shared_runtime.log()
