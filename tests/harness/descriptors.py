"""Which processes hold a descriptor on a file or a pipe, read from /proc/<pid>/fd."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def holders(target: str) -> dict[int, str]:
    """Every process with a descriptor whose link reads `target`: an absolute path, or a pipe's
    `pipe:[inode]`. Maps each pid to its command line, for the failure message."""
    found: dict[int, str] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        # A process may end, or hide its descriptors, while it is read.
        with contextlib.suppress(OSError):
            links = {os.readlink(fd) for fd in (proc / "fd").iterdir()}
            if target in links:
                command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(proc.name)] = command.strip()
    return found


def pipe_link(fd: int) -> str:
    """How /proc shows a descriptor of the pipe that `fd` belongs to."""
    return f"pipe:[{os.fstat(fd).st_ino}]"


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains text (a test's private folder, say)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
    return pids
