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


# The folder's record: written once every file of the fetch is verified, removed before a
# fetch changes anything, so that a folder with it is whole.
FOLDER_RECORD = ".verified.json"


def folder_record_path(dest: Path) -> Path:
    return dest / FOLDER_RECORD


def read_folder_record(dest: Path) -> dict | None:
    """The folder's record when it is intact and every file it lists has its recorded size."""
    found = _folder_record(dest)
    return found if isinstance(found, dict) else None


def folder_unverified_reason(dest: Path) -> str | None:
    """Why the folder is not a finished fetch (None when it is), in words for an operator."""
    found = _folder_record(dest)
    return found if isinstance(found, str) else None


def _folder_record(dest: Path) -> dict | str:
    record_path = folder_record_path(dest)
    try:
        record = json.loads(record_path.read_text())
    except FileNotFoundError:
        return f"{dest} has no {FOLDER_RECORD}: its fetch has not finished"
    except (OSError, ValueError) as err:
        return f"{record_path} is not a readable record ({err})"
    files = record.get("files") if isinstance(record, dict) else None
    if not isinstance(files, list) or not files:
        return f"{record_path} is not a readable record (no list of files)"
    for entry in files:
        path = entry.get("path") if isinstance(entry, dict) else None
        if not isinstance(path, str):
            return f"{record_path} is not a readable record (a file without a path)"
        file = dest / path
        try:
            size = file.stat().st_size
        except OSError as err:
            return f"cannot read {file} ({err.strerror or err}), which {FOLDER_RECORD} lists"
        if size != entry.get("size"):
            return f"{file} holds {size} bytes but {FOLDER_RECORD} records {entry.get('size')}"
    return record


def write_folder_record(dest: Path, record: dict) -> None:
    write_json_atomically(folder_record_path(dest), record)
    _fsync_dir(dest)


def drop_folder_record(dest: Path) -> None:
    """Before a fetch changes a file: the folder is no longer known to be whole."""
    folder_record_path(dest).unlink(missing_ok=True)
