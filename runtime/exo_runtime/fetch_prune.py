"""Which cache directories a fetch is writing, and removing the others (`fetch --prune`).

A fetch holds an exclusive flock on its destination folder for as long as it writes there.
Locks held on another node may not be visible over a network filesystem, so a directory
whose partial file, or the progress file of an unfinished fetch, changed within the last
minutes also counts as live.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

# A live fetch writes its progress file every second or so while bytes arrive; the longest
# quiet spell is the stall timeout (a minute by default) or the hashing of a large partial
# file before a resume. Ten minutes leaves room for both.
LIVE_WITHIN_SECONDS = 600.0


@contextlib.contextmanager
def writing(dest: Path) -> Iterator[None]:
    """Hold `dest`'s lock while a fetch writes there; waits for another fetch into it."""
    fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"another fetch is writing {dest}; waiting for it to end", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def is_cache_dir(path: Path) -> bool:
    """Whether `path` holds what a fetch writes (a record, a partial file, a progress file)."""
    return any(_is_fetch_file(child.name) for child in path.iterdir())


def prune_siblings(dest: Path) -> list[Path]:
    """Remove every cache directory beside `dest` that no fetch is writing; return them."""
    removed: list[Path] = []
    keep = dest.resolve()
    try:
        siblings = sorted(keep.parent.iterdir())
    except OSError as err:
        print(f"warning: cannot list {keep.parent} to prune it: {err}", file=sys.stderr)
        return removed
    for sibling in siblings:
        # Never follow a link out of the cache, nor touch what a fetch did not write.
        if sibling == keep or sibling.is_symlink() or not sibling.is_dir():
            continue
        try:
            if is_cache_dir(sibling) and _remove_unless_live(sibling):
                print(f"pruned {sibling}", file=sys.stderr)
                removed.append(sibling)
        except OSError as err:
            # The new model is in place; an old directory left behind costs only room.
            print(f"warning: cannot prune {sibling}: {err}", file=sys.stderr)
    return removed


def _remove_unless_live(path: Path) -> bool:
    """Remove `path` unless a fetch writes there; hold its lock meanwhile, so none starts."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"keeping {path}: a fetch holds its lock", file=sys.stderr)
            return False
        if _written_lately(path):
            print(f"keeping {path}: a fetch wrote there lately", file=sys.stderr)
            return False
        shutil.rmtree(path)
        return True
    finally:
        os.close(fd)


def _written_lately(path: Path) -> bool:
    """A partial file, or the progress of an unfinished fetch, written within the window."""
    now = time.time()
    for child in path.iterdir():
        if child.name.endswith(".part") or _is_unfinished_progress(child):
            with contextlib.suppress(FileNotFoundError):
                if now - child.stat().st_mtime < LIVE_WITHIN_SECONDS:
                    return True
    return False


def _is_unfinished_progress(path: Path) -> bool:
    if not (path.name.startswith(".") and path.name.endswith(".progress.json")):
        return False
    try:
        state = json.loads(path.read_text()).get("state")
    except (OSError, ValueError, AttributeError):
        return True  # being replaced right now, or unreadable: assume the worst
    return state not in ("done", "failed")


def _is_fetch_file(name: str) -> bool:
    return name.endswith((".verified.json", ".part", ".part.json")) or (
        name.startswith(".") and name.endswith(".progress.json")
    )
