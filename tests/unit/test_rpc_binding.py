"""The ctypes binding of ggml's backend registry and RPC backend, on the installed wheel."""

from __future__ import annotations

import re
from pathlib import Path

import llama_cpp
from exo_runtime import ggml_backends
from exo_runtime.rpc_workers import PROTOCOL_VERSION


def test_the_rpc_functions_resolve_in_the_installed_build() -> None:
    ggml_backends.load_dynamic_backends()
    assert "RPC" in ggml_backends.backend_names()
    for name in ("ggml_backend_rpc_add_server", "ggml_backend_rpc_start_server"):
        assert ggml_backends.reg_function("RPC", name), name
    assert ggml_backends.reg_function("RPC", "no_such_function") is None


def test_the_cpu_backend_is_loaded_from_the_wheels_own_libraries() -> None:
    ggml_backends.load_dynamic_backends()
    path = ggml_backends.cpu_backend_file()
    assert path is not None and Path(path).parent == ggml_backends.library_dir(), path
    # libggml-cpu.so for the default wheel; libggml-cpu-<variant>.so for every variant.
    assert Path(path).name.startswith("libggml-cpu"), path
    assert ggml_backends.cpu_variant() == ggml_backends.cpu_variant_of(path)


def test_the_protocol_version_is_the_one_in_the_wheels_ggml_rpc_h() -> None:
    # The wheel installs llama.cpp's headers beside the package (site-packages/include).
    header = Path(llama_cpp.__file__).parent.parent / "include" / "ggml-rpc.h"
    text = header.read_text()
    shipped = tuple(
        int(re.search(rf"#define RPC_PROTO_{part}_VERSION\s+(\d+)", text).group(1))
        for part in ("MAJOR", "MINOR", "PATCH")
    )
    assert shipped == PROTOCOL_VERSION
