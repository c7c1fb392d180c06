"""Download progress for people (a tqdm bar on a terminal) and for the operator (JSON).

The operator reads progress two ways: the JSON file beside the model (written atomically,
so a reader never sees half of it) and JSON lines on stdout, which it reads from the fetch
pod's log tail when it cannot mount the volume.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import deque
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from tqdm import tqdm

State = Literal["downloading", "verifying", "done", "failed"]

# Rates are measured over the last few seconds, so the ETA follows a link that slows down.
RATE_WINDOW_SECONDS = 10.0
PROGRESS_FILE_INTERVAL_SECONDS = 1.0


def write_json_atomically(path: Path, document: dict[str, Any]) -> None:
    """Replace `path` with `document` so that readers see the old or the new file, never half."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w") as f:
        json.dump(document, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Progress(Protocol):
    """What a download reports to: one file's bytes, or its share of a fetch of many."""

    def start(self, offset: int, total: int | None) -> None: ...
    def advance(self, nbytes: int) -> None: ...
    def set_state(self, state: State, error: str | None = None) -> None: ...


class ProgressReporter:
    """Tracks bytes against a total and reports them to a bar, a file and stdout lines."""

    def __init__(
        self,
        progress_file: Path | None,
        *,
        line_interval: float = 2.0,
        stdout: IO[str] = sys.stdout,
        interactive: bool | None = None,
        label: str = "",
    ) -> None:
        self.progress_file = progress_file
        self.line_interval = line_interval
        self.stdout = stdout
        self.interactive = stdout.isatty() if interactive is None else interactive
        self.label = label
        self.state: State = "downloading"
        self.bytes = 0
        self.total: int | None = None
        self.error: str | None = None
        self._samples: deque[tuple[float, int]] = deque()
        self._last_file_write = 0.0
        self._last_line = 0.0
        self._bar: tqdm | None = None
        self._file_warning_shown = False

    def start(self, offset: int, total: int | None) -> None:
        """A transfer starts at `offset` bytes of `total` (None when the server won't say)."""
        self.state = "downloading"
        self.bytes, self.total = offset, total
        self._samples.clear()
        self._samples.append((time.monotonic(), offset))
        if self.interactive:
            if self._bar is None:
                self._bar = tqdm(
                    total=total, initial=offset, unit="B", unit_scale=True, desc=self.label
                )
            else:
                self._bar.reset(total=total)
                self._bar.update(offset)
        self._report(force=True)

    def advance(self, nbytes: int) -> None:
        self.bytes += nbytes
        now = time.monotonic()
        self._samples.append((now, self.bytes))
        while len(self._samples) > 2 and now - self._samples[0][0] > RATE_WINDOW_SECONDS:
            self._samples.popleft()
        if self._bar is not None:
            self._bar.update(nbytes)
        self._report()

    def set_state(self, state: State, error: str | None = None) -> None:
        self.state, self.error = state, error
        if state in ("done", "failed") and self._bar is not None:
            self._bar.close()
            self._bar = None
        self._report(force=True)

    def snapshot(self) -> dict[str, Any]:
        rate = self._rate()
        eta = None
        if rate and self.total is not None and self.state == "downloading":
            eta = round(max(self.total - self.bytes, 0) / rate, 1)
        return {
            "state": self.state,
            "bytes": self.bytes,
            "totalBytes": self.total,
            "bytesPerSecond": round(rate) if rate is not None else None,
            "etaSeconds": eta,
            "error": self.error,
        }

    def _rate(self) -> float | None:
        if len(self._samples) < 2:
            return None
        (t0, b0), (t1, b1) = self._samples[0], self._samples[-1]
        return (b1 - b0) / (t1 - t0) if t1 > t0 else None

    def _report(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.progress_file and (
            force or now - self._last_file_write >= PROGRESS_FILE_INTERVAL_SECONDS
        ):
            self._last_file_write = now
            self._write_file()
        if not self.interactive and (force or now - self._last_line >= self.line_interval):
            self._last_line = now
            line = {"event": "progress", **self.snapshot()}
            self.stdout.write(json.dumps(line) + "\n")
            self.stdout.flush()

    def _write_file(self) -> None:
        try:
            write_json_atomically(self.progress_file, self.snapshot())
        except OSError as err:
            # Progress is advisory: a full or read-only disk is reported by the download itself.
            if not self._file_warning_shown:
                self._file_warning_shown = True
                print(f"warning: cannot write {self.progress_file}: {err}", file=sys.stderr)
