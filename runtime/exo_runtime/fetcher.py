"""`exo-runtime fetch SOURCE --dest DIR`: put a verified model file in the model cache.

Output contract (the operator relies on it): progress as JSON in the progress file and, when
stdout is not a terminal, as `{"event": "progress", ...}` lines; then one summary line,
`{"event": "done", ...}` or `{"event": "failed", "reason": ..., ...}`, on stdout and in the
Kubernetes termination log. Exit code 0 on success, 1 on failure, 2 for a bad SOURCE.

https uses the bundled CA list unless SSL_CERT_FILE or SSL_CERT_DIR names another (httpx
honours both), as a mirror with a private CA needs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from exo_runtime.fetch_download import (
    Downloaded,
    FetchFailed,
    RetryPolicy,
    StallRule,
    download,
    failure_for_os_error,
    refuse_https_downgrade,
)
from exo_runtime.fetch_progress import ProgressReporter
from exo_runtime.fetch_prune import prune_siblings, writing
from exo_runtime.fetch_source import FetchSource, InvalidSource, parse_source
from exo_runtime.fetch_store import (
    CachePaths,
    discard_part,
    is_already_verified,
    prepare_part,
    promote_part,
)

TERMINATION_LOG = "/dev/termination-log"
_SHA256 = re.compile(r"[0-9a-f]{64}")
CONNECT_TIMEOUT_SECONDS = 15.0


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `fetch` subcommand's arguments to `parser`."""
    parser.add_argument("source", help="http(s)://URL or hf://ORG/REPO/FILE[@REVISION]")
    parser.add_argument("--dest", required=True, type=Path, help="folder of the model cache")
    parser.add_argument("--sha256", type=_sha256_arg, help="expected sha256 of the file (hex)")
    parser.add_argument("--filename", help="file name in DEST (default: from the SOURCE)")
    parser.add_argument(
        "--progress-file",
        type=Path,
        help="JSON progress file (default: DEST/.FILENAME.progress.json)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=2.0,
        help="seconds between JSON progress lines on a non-terminal stdout (default 2)",
    )
    parser.add_argument(
        "--retries", type=int, default=5, help="retries after a transient fault (default 5)"
    )
    parser.add_argument(
        "--retry-backoff",
        type=float,
        default=1.0,
        help="seconds before the first retry, doubled each time (default 1)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=_positive_float,
        default=_env_default(parser, "EXO_FETCH_STALL_TIMEOUT", _positive_float, StallRule.seconds),
        help="seconds of silence, or of too slow a transfer, before a try is given up and "
        "retried (default %(default)s; env EXO_FETCH_STALL_TIMEOUT)",
    )
    parser.add_argument(
        "--min-bytes-per-second",
        type=_non_negative_float,
        default=_env_default(
            parser,
            "EXO_FETCH_MIN_BYTES_PER_SECOND",
            _non_negative_float,
            StallRule.min_bytes_per_second,
        ),
        help="slowest rate, averaged over --stall-timeout, that is not a stall (default "
        "%(default).0f; 0 turns the rule off; env EXO_FETCH_MIN_BYTES_PER_SECOND)",
    )
    parser.add_argument(
        "--prune",
        action="store_true",
        help="after a verified fetch, remove the other cache folders beside DEST that no "
        "fetch is writing",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=Path(TERMINATION_LOG),
        help="also write the summary here when the file exists (Kubernetes' termination log)",
    )


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch `args.source` into `args.dest`; print the summary line and return the exit code."""
    started = time.monotonic()
    try:
        source = parse_source(args.source, args.filename)
    except InvalidSource as err:
        _finish(args, {"event": "failed", "reason": "InvalidSource", "error": str(err)})
        return 2
    paths = CachePaths.for_file(args.dest, source.filename)
    progress_file = args.progress_file or args.dest / f".{source.filename}.progress.json"
    progress = ProgressReporter(
        progress_file, line_interval=args.progress_interval, label=source.filename
    )
    try:
        result = _fetch(source, args, paths, progress)
    except FetchFailed as err:
        progress.set_state("failed", str(err))
        _finish(args, {"event": "failed", "reason": err.reason, "error": str(err)})
        return 1
    progress.set_state("done")
    if args.prune:
        prune_siblings(args.dest)
    _finish(
        args,
        {
            "event": "done",
            "sha256": result.sha256,
            "bytes": result.size,
            "seconds": round(time.monotonic() - started, 3),
            "path": str(paths.final),
        },
    )
    return 0


def _fetch(
    source: FetchSource, args: argparse.Namespace, paths: CachePaths, progress: ProgressReporter
) -> Downloaded:
    record = is_already_verified(paths, source.source, args.sha256)
    if record is not None:
        print(f"{paths.final} is already verified; nothing to download", file=sys.stderr)
        progress.start(record["size"], record["size"])
        return Downloaded(sha256=record["sha256"], size=record["size"])
    with contextlib.ExitStack() as stack:
        try:
            args.dest.mkdir(parents=True, exist_ok=True)
            # Held until the file is promoted: `--prune` elsewhere leaves this folder alone.
            stack.enter_context(writing(args.dest))
            validator = prepare_part(paths, source.source)
        except OSError as err:
            raise failure_for_os_error(err, args.dest) from err
        return _download_and_promote(source, args, paths, validator, progress)


def _download_and_promote(
    source: FetchSource,
    args: argparse.Namespace,
    paths: CachePaths,
    validator: str | None,
    progress: ProgressReporter,
) -> Downloaded:
    policy = RetryPolicy(retries=max(args.retries, 0), backoff=args.retry_backoff)
    stall = StallRule(seconds=args.stall_timeout, min_bytes_per_second=args.min_bytes_per_second)
    with httpx.Client(
        follow_redirects=True,
        # The read timeout is the stall rule's window: a silent server is a stalled one.
        timeout=httpx.Timeout(stall.seconds, connect=CONNECT_TIMEOUT_SECONDS),
        event_hooks={"response": [refuse_https_downgrade]},
    ) as client:
        result = download(client, source, paths, validator, progress, policy, stall)
    progress.set_state("verifying")
    if args.sha256 is not None and result.sha256 != args.sha256:
        # The bytes are wrong, so resuming from them would be wrong too.
        discard_part(paths)
        raise FetchFailed(
            "ChecksumMismatch",
            f"sha256 of {source.url} is {result.sha256}, expected {args.sha256}: the file "
            "changed upstream or the expected sha256 is wrong; nothing was kept",
        )
    record = {"sha256": result.sha256, "size": result.size, "source": source.source}
    try:
        promote_part(paths, record)
    except OSError as err:
        raise failure_for_os_error(err, paths.final) from err
    return result


def _finish(args: argparse.Namespace, summary: dict[str, Any]) -> None:
    line = json.dumps(summary)
    if summary["event"] == "failed":
        print(f"error: {summary['error']}", file=sys.stderr)
    print(line, flush=True)
    log: Path = args.termination_log
    # Only Kubernetes creates this file; never create it on someone's own machine.
    if log.exists():
        with contextlib.suppress(OSError):  # the summary is on stdout anyway
            log.write_text(line + "\n")


def _env_default(
    parser: argparse.ArgumentParser, name: str, parse: Callable[[str], float], fallback: float
) -> float:
    """A flag's default from its environment variable (pods set those more easily)."""
    raw = os.environ.get(name)
    if raw in (None, ""):
        return fallback
    try:
        return parse(raw)
    except (ValueError, argparse.ArgumentTypeError) as err:
        parser.error(f"{name}={raw!r} is invalid: {err}")


def _positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def _non_negative_float(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def _sha256_arg(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise argparse.ArgumentTypeError(f"{value!r} is not a sha256 (64 hex digits)")
    return digest
