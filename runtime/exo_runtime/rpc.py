"""llama.cpp's RPC backend through ctypes: a worker's server, a head's worker devices.

A worker runs ggml's RPC server over its own device; the head registers each worker as a
backend device and llama.cpp places layers on it, sending the weights over the connection
(a worker never reads the model file). The calls come from the RPC backend's registry entry
(`ggml_backend_reg_get_proc_address`), which works whether the backend is a dynamic library
or linked in; llama-cpp-python 0.3.36 binds none of them.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

from exo_runtime import ggml_backends
from exo_runtime.engine import ModelLoadError
from exo_runtime.rpc_workers import Endpoint

_add_server_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_char_p)
_start_server_type = ctypes.CFUNCTYPE(
    None,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_size_t,
    ctypes.POINTER(ctypes.c_void_p),
)


def _rpc_function(name: str, prototype: type) -> Callable[..., object]:
    ggml_backends.load_dynamic_backends()
    address = ggml_backends.reg_function("RPC", name)
    if address is None:
        raise ModelLoadError(
            f"this llama.cpp build has no RPC backend ({name} not found): the runtime image "
            "must be built with GGML_RPC=ON"
        )
    return prototype(address)


def add_worker(endpoint: Endpoint) -> list[str]:
    """Register the worker's devices with ggml, so llama.cpp places layers on them; return
    their names (RPC0, RPC1...). Call only after rpc_workers.check_worker: llama.cpp aborts
    the process on a worker it cannot reach."""
    add_server = _rpc_function("ggml_backend_rpc_add_server", _add_server_type)
    before = _gpu_device_names()
    reg = add_server(str(endpoint).encode())
    if not reg:
        raise ModelLoadError(f"rpc worker {endpoint} offers no device")
    ggml_backends.register_backend(reg)
    return [name for name in _gpu_device_names() if name not in before]


def _gpu_device_names() -> list[str]:
    # llama.cpp reports an RPC device as a GPU, whatever the worker runs on.
    return [
        ggml_backends.device_name(device)
        for device in ggml_backends.devices_of_type(ggml_backends.DEVICE_GPU)
    ]


def serving_devices() -> list[int]:
    """What a worker serves: every GPU when it has any, else its CPU (llama.cpp's rpc-server)."""
    ggml_backends.load_dynamic_backends()
    gpus = ggml_backends.devices_of_type(ggml_backends.DEVICE_GPU)
    gpus = [d for d in gpus if not ggml_backends.device_name(d).startswith("RPC")]
    return gpus or ggml_backends.devices_of_type(ggml_backends.DEVICE_CPU)


def run_server(endpoint: Endpoint, devices: Sequence[int], threads: int) -> None:
    """Serve `devices` at `endpoint` until the process ends; returns only if it cannot listen."""
    start_server = _rpc_function("ggml_backend_rpc_start_server", _start_server_type)
    array = (ctypes.c_void_p * len(devices))(*devices)
    start_server(str(endpoint).encode(), None, threads, len(devices), array)
