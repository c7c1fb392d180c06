"""The model cache on disk: the verified file, its `.verified.json` record, and the `.part` file.

A verified file is replaced only by another verified file (an atomic rename), so a failed
or interrupted fetch never loses it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from exo_runtime.fetch_progress import write_json_atomically


@dataclass(frozen=True)
class CachePaths:
    final: Path  # <dest>/<file>
    part: Path  # <dest>/<file>.part: the download in progress
    part_record: Path  # <dest>/<file>.part.json: which source the part belongs to
    verified: Path  # <dest>/<file>.verified.json: sha256, size and source of the final file

    @classmethod
    def for_file(cls, dest: Path, filename: str) -> CachePaths:
        return cls(
            final=dest / filename,
            part=dest / f"{filename}.part",
            part_record=dest / f"{filename}.part.json",
            verified=dest / f"{filename}.verified.json",
        )


def read_verified(paths: CachePaths) -> dict | None:
    """The record of the verified file, or None when there is no intact one."""
    found = _verified_record(paths)
    return found if isinstance(found, dict) else None


def unverified_reason(paths: CachePaths) -> str | None:
    """Why the file has no intact record (None when it has one), in words for an operator."""
    found = _verified_record(paths)
    return found if isinstance(found, str) else None


def _verified_record(paths: CachePaths) -> dict | str:
    """The intact record, or the reason there is none."""
    try:
        size = paths.final.stat().st_size
    except OSError as err:
        return f"cannot read {paths.final} ({err.strerror or err})"
    try:
        record = json.loads(paths.verified.read_text())
    except FileNotFoundError:
        return f"{paths.final} has no {paths.verified.name} beside it"
    except (OSError, ValueError) as err:
        return f"{paths.verified} is not a readable record ({err})"
    if not isinstance(record, dict):
        return f"{paths.verified} is not a readable record (not a JSON object)"
    if record.get("size") != size:
        recorded = record.get("size")
        return f"{paths.final} holds {size} bytes but {paths.verified.name} records {recorded}"
    return record


def is_already_verified(paths: CachePaths, source: str, sha256: str | None) -> dict | None:
    """The record when the final file came from `source` (and has `sha256`, when given)."""
    record = read_verified(paths)
    if record is None or record.get("source") != source:
        return None
    if sha256 is not None and record.get("sha256") != sha256:
        return None
    return record


def prepare_part(paths: CachePaths, source: str) -> str | None:
    """Keep a partial file only if it belongs to `source` and its validator is known.

    Returns that validator (the ETag or Last-Modified the server gave for those bytes), which
    a resume must send as If-Range; without one the part is dropped, as resuming blind could
    splice two versions of the file.
    """
    try:
        record = json.loads(paths.part_record.read_text())
    except (OSError, ValueError):
        record = None
    if not isinstance(record, dict):
        record = {}
    validator = record.get("validator")
    if record.get("source") == source and isinstance(validator, str) and validator:
        return validator
    paths.part.unlink(missing_ok=True)
    write_json_atomically(paths.part_record, {"source": source})
    return None


def record_part_validator(paths: CachePaths, source: str, validator: str | None) -> None:
    """Remember which version of the file the part's bytes come from (None: unknown)."""
    record: dict = {"source": source}
    if validator:
        record["validator"] = validator
    write_json_atomically(paths.part_record, record)


def discard_part(paths: CachePaths) -> None:
    paths.part.unlink(missing_ok=True)
    paths.part_record.unlink(missing_ok=True)


def promote_part(paths: CachePaths, record: dict) -> None:
    """Make the verified part the final file, durably, then record what it is."""
    with paths.part.open("rb+") as f:
        os.fsync(f.fileno())
    # Drop the old record first: a crash between the two steps leaves a file without a
    # record (fetched again next time), never a record describing the wrong file.
    paths.verified.unlink(missing_ok=True)
    os.replace(paths.part, paths.final)
    _fsync_dir(paths.final.parent)
    write_json_atomically(paths.verified, record)
    paths.part_record.unlink(missing_ok=True)
    _fsync_dir(paths.final.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
