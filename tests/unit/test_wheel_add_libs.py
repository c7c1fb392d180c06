"""scripts/wheel-add-libs.py puts the CPU variants into the wheel with a RECORD pip trusts."""

import base64
import hashlib
import runpy
import zipfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
add_libs = runpy.run_path(str(REPO_ROOT / "scripts" / "wheel-add-libs.py"))["add_libs"]
RECORD = "llama_cpp_python-0.3.36.dist-info/RECORD"


def make_wheel(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr("llama_cpp/lib/libggml-cpu.so", b"generic")
        wheel.writestr(RECORD, "llama_cpp/lib/libggml-cpu.so,sha256=x,7\n" + f"{RECORD},,\n")


def sha256(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_added_libraries_sit_beside_the_wheels_own_and_are_recorded(tmp_path):
    make_wheel(tmp_path / "in.whl")
    lib = tmp_path / "libggml-cpu-haswell.so"
    lib.write_bytes(b"\x7fELF haswell kernels")
    add_libs(tmp_path / "in.whl", tmp_path / "out.whl", [lib])

    with zipfile.ZipFile(tmp_path / "out.whl") as wheel:
        assert wheel.read("llama_cpp/lib/libggml-cpu-haswell.so") == lib.read_bytes()
        assert wheel.read("llama_cpp/lib/libggml-cpu.so") == b"generic"
        assert wheel.getinfo("llama_cpp/lib/libggml-cpu-haswell.so").external_attr >> 16 == 0o755
        record = wheel.read(RECORD).decode().splitlines()
    data = lib.read_bytes()
    assert f"llama_cpp/lib/libggml-cpu-haswell.so,{sha256(data)},{len(data)}" in record
    assert record[-1] == f"{RECORD},,"  # the RECORD names itself once, last, without a hash
    assert sum(line.startswith(f"{RECORD},") for line in record) == 1


def test_a_library_the_wheel_already_has_is_refused(tmp_path):
    make_wheel(tmp_path / "in.whl")
    clash = tmp_path / "libggml-cpu.so"
    clash.write_bytes(b"other")
    with pytest.raises(SystemExit, match=r"already holds llama_cpp/lib/libggml-cpu\.so"):
        add_libs(tmp_path / "in.whl", tmp_path / "out.whl", [clash])
    assert not (tmp_path / "out.whl").exists()
