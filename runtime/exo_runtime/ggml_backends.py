"""ggml's backend registry through ctypes: loading the dynamic backends, naming what loaded.

The llama-cpp-python wheel is built with `GGML_BACKEND_DL`: every backend (one CPU backend per
CPU generation, RPC, CUDA...) is a shared library beside libllama, and ggml loads the best CPU
variant for the machine it runs on. llama.cpp looks for them beside the executable and in the
working directory (python's bin/ and wherever the pod starts), never beside libllama, so the
runtime loads them from the wheel's lib folder itself before llama.cpp initialises.
llama-cpp-python 0.3.36 binds none of these calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

# enum ggml_backend_dev_type (ggml-backend.h)
DEVICE_CPU, DEVICE_GPU, DEVICE_IGPU, DEVICE_ACCEL = 0, 1, 2, 3

# One "load_tensors: <buffer> model buffer size = <MiB> MiB" line per weights buffer
# (llama-model.cpp); the only place llama.cpp's C API tells how the weights were placed.
_MODEL_BUFFER_LINE = re.compile(r"load_tensors:\s+(\S+) model buffer size =\s+([0-9.]+) MiB")
# An RPC buffer is named "RPC<device>[<host>:<port>]" (ggml-rpc.cpp).
_RPC_BUFFER_NAME = re.compile(r"^(RPC\d+)\[(.+)\]$")
# The CPU backend variants are libggml-cpu-<variant>.so; a build without GGML_BACKEND_DL has
# a single libggml-cpu.so.
_CPU_VARIANT_FILE = re.compile(r"ggml-cpu-([A-Za-z0-9_.]+)\.(?:so|dylib|dll)$")


def library_dir() -> Path:
    """The folder llama-cpp-python loaded libllama from (LLAMA_CPP_LIB_PATH or its lib/)."""
    # Imported here: the log parsing below is used where llama.cpp is not installed.
    import llama_cpp.llama_cpp

    return Path(llama_cpp.llama_cpp._base_path)


def _loaded_libggml() -> str:
    """The libggml file libllama was linked against, as this process mapped it.

    A wheel cannot hold symlinks, so libggml.so, libggml.so.0 and libggml.so.0.x are three
    copies of one library: opening another copy than libllama's would give ggml a second,
    empty backend registry that llama.cpp never sees.
    """
    import llama_cpp.llama_cpp  # noqa: F401  (maps libllama, and with it its libggml)

    for line in Path("/proc/self/maps").read_text().splitlines():
        path = line.split(maxsplit=5)[-1] if line.count(" ") >= 5 else ""
        if re.fullmatch(r"libggml\.so(\.\d+)*", Path(path).name):
            return path
    return str(library_dir() / "libggml.so")  # not linked in separately (a static build)


@cache
def libggml() -> ctypes.CDLL:
    """libggml, the registry's library, with the signatures the runtime calls."""
    lib = ctypes.CDLL(_loaded_libggml())
    p, size, c_str = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_char_p
    for name, restype, argtypes in (
        ("ggml_backend_load_all_from_path", None, [c_str]),
        ("ggml_backend_reg_count", size, []),
        ("ggml_backend_reg_get", p, [size]),
        ("ggml_backend_reg_by_name", p, [c_str]),
        ("ggml_backend_reg_name", c_str, [p]),
        ("ggml_backend_reg_get_proc_address", p, [p, c_str]),
        ("ggml_backend_register", None, [p]),
        ("ggml_backend_dev_count", size, []),
        ("ggml_backend_dev_get", p, [size]),
        ("ggml_backend_dev_name", c_str, [p]),
        ("ggml_backend_dev_description", c_str, [p]),
        ("ggml_backend_dev_type", ctypes.c_int, [p]),
    ):
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


def load_dynamic_backends() -> None:
    """Load the backend libraries beside libllama once; a build without them has its
    backends registered already, and this does nothing."""
    lib = libggml()
    # A GGML_BACKEND_DL build starts with an empty registry; any other registers its
    # backends when libggml loads.
    if lib.ggml_backend_reg_count() == 0:
        lib.ggml_backend_load_all_from_path(str(library_dir()).encode())


def backend_names() -> list[str]:
    lib = libggml()
    return [
        lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i)).decode()
        for i in range(lib.ggml_backend_reg_count())
    ]


class _DlInfo(ctypes.Structure):
    _fields_ = [
        ("dli_fname", ctypes.c_char_p),
        ("dli_fbase", ctypes.c_void_p),
        ("dli_sname", ctypes.c_char_p),
        ("dli_saddr", ctypes.c_void_p),
    ]


def _library_holding(address: int) -> str | None:
    """The file of the loaded library whose mapping holds `address` (dladdr)."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    libc.dladdr.argtypes = [ctypes.c_void_p, ctypes.POINTER(_DlInfo)]
    libc.dladdr.restype = ctypes.c_int
    info = _DlInfo()
    if not libc.dladdr(address, ctypes.byref(info)) or not info.dli_fname:
        return None
    return info.dli_fname.decode()


def cpu_backend_file() -> str | None:
    """The library the CPU backend was loaded from, or None when none is loaded."""
    reg = libggml().ggml_backend_reg_by_name(b"CPU")
    return _library_holding(reg) if reg else None


def cpu_variant_of(path: str | None) -> str | None:
    """ "haswell" for .../libggml-cpu-haswell.so; None for a build with one CPU backend."""
    match = _CPU_VARIANT_FILE.search(path or "")
    return match.group(1) if match else None


def cpu_variant() -> str | None:
    """The CPU backend variant ggml picked for this machine (x64, sse42, haswell, skylakex...)."""
    return cpu_variant_of(cpu_backend_file())


def register_backend(reg: int) -> None:
    libggml().ggml_backend_register(reg)


def reg_function(backend: str, name: str) -> int | None:
    """The address of a backend's extra function (ggml_backend_reg_get_proc_address)."""
    lib = libggml()
    reg = lib.ggml_backend_reg_by_name(backend.encode())
    if not reg:
        return None
    return lib.ggml_backend_reg_get_proc_address(reg, name.encode()) or None


def devices_of_type(device_type: int) -> list[int]:
    lib = libggml()
    devices = (lib.ggml_backend_dev_get(i) for i in range(lib.ggml_backend_dev_count()))
    return [d for d in devices if lib.ggml_backend_dev_type(d) == device_type]


def has_local_gpu() -> bool:
    """A GPU of this machine (not an RPC worker, which ggml also reports as a GPU)."""
    gpus = devices_of_type(DEVICE_GPU) + devices_of_type(DEVICE_IGPU)
    return any(not device_name(d).startswith("RPC") for d in gpus)


def device_name(device: int) -> str:
    return libggml().ggml_backend_dev_name(device).decode()


@dataclass(frozen=True)
class DeviceShare:
    """The weights one device holds: "CPU" (the head's own memory), "RPC0" with an endpoint
    (device 0 of that worker), "CUDA0"..."""

    name: str
    bytes: int
    endpoint: str | None = None  # host:port of an RPC worker

    def as_dict(self) -> dict[str, str | int]:
        shape: dict[str, str | int] = {"name": self.name, "bytes": self.bytes}
        if self.endpoint is not None:
            shape["endpoint"] = self.endpoint
        return shape


def weights_per_device(log_lines: list[str]) -> list[DeviceShare]:
    """Bytes of weights per device from llama.cpp's load log, in the order it placed them.

    Sizes are logged to 0.01 MiB, so each is exact to about 5 KiB. The mapped and the copied
    CPU buffers (CPU_Mapped, CPU_REPACK, CPU) are all the head's memory: one "CPU" entry.
    """
    shares: dict[tuple[str, str | None], DeviceShare] = {}
    for line in log_lines:
        match = _MODEL_BUFFER_LINE.search(line)
        if not match:
            continue
        buffer, mib = match.group(1), float(match.group(2))
        size = round(mib * 1024 * 1024)
        rpc = _RPC_BUFFER_NAME.match(buffer)
        if rpc:
            name, endpoint = rpc.group(1), rpc.group(2)
        else:
            name, endpoint = buffer.split("_", 1)[0], None
        known = shares.get((name, endpoint))
        total = size + (known.bytes if known else 0)
        shares[name, endpoint] = DeviceShare(name, total, endpoint)
    return list(shares.values())
