"""Adds shared libraries to a built wheel's llama_cpp/lib folder and rewrites its RECORD.

    python3 scripts/wheel-add-libs.py IN.whl OUT.whl LIB.so...

scripts/wheelhouse.sh uses it to put the CPU backend variants, compiled from the same
llama.cpp source as the wheel, beside the wheel's own libggml-cpu.so: ggml's loader then
picks the best the machine supports. Standard library only: it runs before any venv exists.
"""

import base64
import hashlib
import sys
import zipfile
from pathlib import Path

LIB_DIR = "llama_cpp/lib"


def record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def add_libs(source: Path, target: Path, libs: list[Path]) -> None:
    added = {f"{LIB_DIR}/{lib.name}": lib.read_bytes() for lib in libs}
    with zipfile.ZipFile(source) as wheel_in:
        (record,) = [n for n in wheel_in.namelist() if n.endswith(".dist-info/RECORD")]
        clashes = sorted(set(added) & set(wheel_in.namelist()))
        if clashes:
            raise SystemExit(f"{source.name} already holds {', '.join(clashes)}")
        lines = wheel_in.read(record).decode().splitlines()
        lines = [line for line in lines if line and not line.startswith(f"{record},")]
        lines += [record_line(name, data) for name, data in added.items()]
        lines.append(f"{record},,")
        with zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as wheel_out:
            for item in wheel_in.infolist():
                if item.filename != record:
                    wheel_out.writestr(item, wheel_in.read(item))
            for name, data in added.items():
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.external_attr = 0o755 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                wheel_out.writestr(info, data)
            wheel_out.writestr(record, "\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 4:
        raise SystemExit(__doc__)
    add_libs(Path(sys.argv[1]), Path(sys.argv[2]), [Path(p) for p in sys.argv[3:]])
