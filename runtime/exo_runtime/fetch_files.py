"""Download every file of a fetch plan into the cache, each verified and renamed on its own.

A file already verified (its `.verified.json` matches) is kept, so a fetch interrupted after
some files resumes with the others. Progress counts over the whole plan.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from exo_runtime.fetch_download import (
    Downloaded,
    RetryPolicy,
    StallRule,
    download,
    failure_for_os_error,
)
from exo_runtime.fetch_errors import FetchFailed
from exo_runtime.fetch_plan import FetchPlan, PlannedFile
from exo_runtime.fetch_progress import ProgressReporter, State
from exo_runtime.fetch_source import FetchSource
from exo_runtime.fetch_store import (
    CachePaths,
    discard_part,
    prepare_part,
    promote_part,
    read_verified,
)


class _ShareOfPlan:
    """One file's progress as bytes of the whole plan: files before it count as done."""

    def __init__(self, overall: ProgressReporter, done_before: int, plan_total: int | None):
        self.overall, self.done_before, self.plan_total = overall, done_before, plan_total

    def start(self, offset: int, total: int | None) -> None:
        # A plan of one file of unknown size learns its total from the server's answer.
        if self.plan_total is None and self.done_before == 0 and total is not None:
            self.plan_total = total
        self.overall.start(self.done_before + offset, self.plan_total)

    def advance(self, nbytes: int) -> None:
        self.overall.advance(nbytes)

    def set_state(self, state: State, error: str | None = None) -> None:
        self.overall.set_state(state, error)


def fetch_plan_files(
    client: httpx.Client,
    plan: FetchPlan,
    dest: Path,
    progress: ProgressReporter,
    policy: RetryPolicy,
    stall: StallRule,
    log: Callable[[str], None],
) -> list[dict]:
    """Fetch each file of `plan` into `dest`; return their records (path, sha256, size)."""
    single = len(plan.files) == 1
    total = plan.total_bytes
    done = 0
    downloaded = False
    records = []
    for planned in plan.files:
        paths = _paths(dest, planned)
        result = _already_verified(paths, planned)
        if result is not None:
            log(f"{paths.final} is already verified; nothing to download")
        else:
            share = _ShareOfPlan(progress, done, total if not single else planned.size)
            result = _fetch_one(client, planned, paths, share, policy, stall)
            downloaded = True
        done += result.size
        records.append({"path": planned.path, "sha256": result.sha256, "size": result.size})
    if not downloaded:
        progress.start(done, done)
    return records


def _paths(dest: Path, planned: PlannedFile) -> CachePaths:
    final = dest / planned.path
    return CachePaths.for_file(final.parent, final.name)


def _already_verified(paths: CachePaths, planned: PlannedFile) -> Downloaded | None:
    record = read_verified(paths)
    if record is None:
        return None
    if planned.sha256 is not None:
        # The bytes are what was asked for, whichever URL or commit they came from.
        matches = record.get("sha256") == planned.sha256
    else:
        matches = record.get("source") == planned.source
    if not matches or (planned.size is not None and record.get("size") != planned.size):
        return None
    return Downloaded(sha256=record["sha256"], size=record["size"])


def _fetch_one(
    client: httpx.Client,
    planned: PlannedFile,
    paths: CachePaths,
    progress: _ShareOfPlan,
    policy: RetryPolicy,
    stall: StallRule,
) -> Downloaded:
    try:
        paths.final.parent.mkdir(parents=True, exist_ok=True)
        validator = prepare_part(paths, planned.source)
    except OSError as err:
        raise failure_for_os_error(err, paths.final) from err
    source = FetchSource(
        source=planned.source, url=planned.url, filename=paths.final.name, headers=planned.headers
    )
    try:
        result = download(client, source, paths, validator, progress, policy, stall)
    except FetchFailed as err:
        if err.reason == "NotFound" and planned.split_part:
            raise FetchFailed(
                "MissingPart",
                f"part {planned.split_part} of the split GGUF, {planned.path}, is missing: {err}",
            ) from err
        raise
    progress.set_state("verifying")
    problem = _mismatch(planned, result)
    if problem:
        # The bytes are wrong, so resuming from them would be wrong too.
        discard_part(paths)
        raise FetchFailed(
            "ChecksumMismatch",
            f"{planned.path}: {problem}: the file changed upstream or the expected sha256 is "
            "wrong; its download was not kept",
        )
    record = {"sha256": result.sha256, "size": result.size, "source": planned.source}
    try:
        promote_part(paths, record)
    except OSError as err:
        raise failure_for_os_error(err, paths.final) from err
    return result


def _mismatch(planned: PlannedFile, result: Downloaded) -> str | None:
    if planned.sha256 is not None and result.sha256 != planned.sha256:
        return f"sha256 of {planned.url} is {result.sha256}, expected {planned.sha256}"
    if planned.size is not None and result.size != planned.size:
        return f"{planned.url} brought {result.size} bytes, the listing says {planned.size}"
    return None
