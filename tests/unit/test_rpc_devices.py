"""What the runtime reports about placement: weights per device from llama.cpp's load log, and
the CPU backend variant from the library ggml loaded."""

from __future__ import annotations

import pytest
from exo_runtime.ggml_backends import DeviceShare, cpu_variant_of, weights_per_device

MIB = 1024 * 1024


def test_weights_per_device_read_from_the_load_log() -> None:
    lines = [
        "load_tensors: loading model tensors, this can take a while... (mmap = true)\n",
        "load_tensors: offloading 18 repeating layers to GPU\n",
        "load_tensors: RPC0[127.0.0.1:50052] model buffer size =    60.25 MiB\n",
        "load_tensors: RPC0[10.1.2.3:50052] model buffer size =    58.00 MiB\n",
        "load_tensors:   CPU_Mapped model buffer size =   160.00 MiB\n",
        "load_tensors:   CPU_REPACK model buffer size =     1.50 MiB\n",
    ]
    assert weights_per_device(lines) == [
        DeviceShare("RPC0", round(60.25 * MIB), "127.0.0.1:50052"),
        DeviceShare("RPC0", 58 * MIB, "10.1.2.3:50052"),
        DeviceShare("CPU", round(161.5 * MIB)),
    ]


def test_a_device_share_shapes_as_the_api_shows_it() -> None:
    shape = {"name": "RPC0", "bytes": 5, "endpoint": "w:1"}
    assert DeviceShare("RPC0", 5, "w:1").as_dict() == shape
    assert DeviceShare("CPU", 7).as_dict() == {"name": "CPU", "bytes": 7}


def test_no_buffer_lines_is_no_devices() -> None:
    assert weights_per_device(["llama_model_loader: loaded meta data\n"]) == []


@pytest.mark.parametrize(
    ("path", "variant"),
    [
        ("/venv/lib/python3.11/site-packages/llama_cpp/lib/libggml-cpu-haswell.so", "haswell"),
        ("/x/libggml-cpu-skylakex.so", "skylakex"),
        ("/x/libggml-cpu-x64.so", "x64"),
        ("/x/libggml-cpu-armv8.2_1.so", "armv8.2_1"),
        ("/x/libggml-cpu.so", None),  # a build with one CPU backend
        (None, None),
    ],
)
def test_the_cpu_variant_is_named_by_its_library(path: str | None, variant: str | None) -> None:
    assert cpu_variant_of(path) == variant
