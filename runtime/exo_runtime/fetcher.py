"""`exo-runtime fetch`: put a verified model, of one file or several, in the model cache.

SOURCE is an http(s) URL, `hf://ORG/REPO/FILE[@REVISION]` (one file of a Hugging Face
repository) or `hf://ORG/REPO[@REVISION]` (its files, or those `--include` selects); or, instead
of SOURCE, a list of `--file URL=SHA256`. A split GGUF (`*-00001-of-0000N.gguf`) brings all its
parts. Each file is verified and renamed on its own; once all are, DEST/.verified.json lists
them, and only a folder with that record is whole (`serve --require-verified`).

Output contract (the operator relies on it): progress as JSON in the progress file and, when
stdout is not a terminal, as `{"event": "progress", ...}` lines, bytes counted over all files;
then one summary line, `{"event": "done", ...}` or `{"event": "failed", "reason": ..., ...}`,
on stdout and in the Kubernetes termination log. Exit code 0 on success, 1 on failure, 2 for
a bad SOURCE.

https uses the bundled CA list unless SSL_CERT_FILE or SSL_CERT_DIR names another (httpx
honours both), as a mirror with a private CA needs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from exo_runtime.fetch_download import (
    RetryPolicy,
    StallRule,
    failure_for_os_error,
    refuse_https_downgrade,
)
from exo_runtime.fetch_errors import FetchFailed
from exo_runtime.fetch_files import fetch_plan_files
from exo_runtime.fetch_hub import list_revision, plan_hub
from exo_runtime.fetch_plan import (
    WHOLE_FOLDER,
    FetchPlan,
    PlannedFile,
    model_entry,
    split_gguf_parts,
)
from exo_runtime.fetch_progress import ProgressReporter
from exo_runtime.fetch_prune import prune_siblings, writing
from exo_runtime.fetch_source import (
    FetchSource,
    HubSource,
    InvalidSource,
    is_hub_source,
    parse_file_entry,
    parse_hub,
    parse_url,
    url_file_name,
    url_with_last_segment,
)
from exo_runtime.fetch_store import drop_folder_record, read_folder_record, write_folder_record

TERMINATION_LOG = "/dev/termination-log"
_SHA256 = re.compile(r"[0-9a-f]{64}")
CONNECT_TIMEOUT_SECONDS = 15.0
# The progress file of a fetch of several files (one file's is DEST/.FILE.progress.json).
FOLDER_PROGRESS = ".fetch.progress.json"


def add_fetch_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `fetch` subcommand's arguments to `parser`."""
    parser.add_argument(
        "source",
        nargs="?",
        help="http(s)://URL, hf://ORG/REPO/FILE[@REVISION] (one file) or hf://ORG/REPO[@REVISION] "
        "(the repository's files); omitted with --file",
    )
    parser.add_argument("--dest", required=True, type=Path, help="folder of the model cache")
    parser.add_argument(
        "--include",
        action="append",
        default=[],
        metavar="GLOB",
        help="with hf://ORG/REPO: fetch only the files matching GLOB ('*.safetensors', "
        "'config.json', 'tokenizer*'); repeatable (default: every file of the revision)",
    )
    parser.add_argument(
        "--file",
        dest="files",
        action="append",
        default=[],
        type=_file_entry_arg,
        metavar="URL=SHA256",
        help="one file of a model made of several, with its sha256; repeatable, instead of SOURCE",
    )
    parser.add_argument(
        "--sha256",
        type=_sha256_arg,
        help="expected sha256 of the SOURCE file (hex); a Hub file is also checked against the "
        "sha256 the Hub lists",
    )
    parser.add_argument("--filename", help="file name in DEST (default: from the SOURCE)")
    parser.add_argument(
        "--progress-file",
        type=Path,
        help="JSON progress file (default: DEST/.FILENAME.progress.json, or "
        f"DEST/{FOLDER_PROGRESS} for several files)",
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


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    # As PID 1 of its container the fetch would ignore SIGTERM and download on until the
    # kubelet's SIGKILL; exit now instead, keeping the partial file for the next try to resume.
    raise SystemExit(128 + signum)


def run_fetch(args: argparse.Namespace) -> int:
    """Fetch what `args` asks into `args.dest`; print the summary line and return the exit code."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    started = time.monotonic()
    try:
        request = _request_for(args)
    except InvalidSource as err:
        _finish(args, {"event": "failed", "reason": "InvalidSource", "error": str(err)})
        return 2
    progress = ProgressReporter(
        args.progress_file or args.dest / request.progress_name,
        line_interval=args.progress_interval,
        label=request.label,
    )
    try:
        record = _fetch(request, args, progress)
    except FetchFailed as err:
        progress.set_state("failed", str(err))
        _finish(args, {"event": "failed", "reason": err.reason, "error": str(err)})
        return 1
    progress.set_state("done")
    if args.prune:
        prune_siblings(args.dest)
    _finish(args, _done_summary(args.dest, record, time.monotonic() - started))
    return 0


@dataclass(frozen=True)
class _Request:
    """What was asked, before any network: its identity and how to plan it."""

    identity: dict[str, Any]  # recorded in DEST/.verified.json; a later run must match it
    progress_name: str
    label: str
    # Makes the plan; a Hub source lists the revision with the client.
    plan: Callable[[httpx.Client, RetryPolicy], FetchPlan]


def _request_for(args: argparse.Namespace) -> _Request:
    if args.files:
        if args.source or args.sha256 or args.filename or args.include:
            raise InvalidSource(
                "--file lists every file with its sha256: give no SOURCE, --sha256, --filename "
                "or --include with it"
            )
        return _url_list_request(args.files)
    if not args.source:
        raise InvalidSource("give a SOURCE, or the model's files as --file URL=SHA256")
    if is_hub_source(args.source):
        return _hub_request(args)
    if args.include:
        raise InvalidSource("--include selects files of a Hub repository (hf://ORG/REPO)")
    return _url_request(parse_url(args.source, args.filename), args.sha256)


def _url_request(source: FetchSource, sha256: str | None) -> _Request:
    names = split_gguf_parts(url_file_name(source.url))
    if names and source.filename != url_file_name(source.url):
        raise InvalidSource(
            f"--filename cannot rename {source.url}, a part of a split GGUF: llama.cpp finds "
            "the other parts by their names"
        )
    names = names or [source.filename]
    files = []
    for index, name in enumerate(names):
        named = name == source.filename
        url = source.url if named else url_with_last_segment(source.url, name)
        files.append(
            PlannedFile(
                path=name,
                url=url,
                source=url,
                # --sha256 is the SOURCE file's; the other parts of a split GGUF have none.
                sha256=sha256 if named else None,
                split_part=f"{index + 1} of {len(names)}" if index else None,
            )
        )
    identity = {"source": source.url, "filename": source.filename, "sha256": sha256}
    plan = FetchPlan(request=identity, files=tuple(files), model=names[0])
    return _Request(
        identity=identity,
        progress_name=f".{source.filename}.progress.json",
        label=source.filename,
        plan=lambda _client, _policy: plan,
    )


def _url_list_request(entries: list[tuple[str, str]]) -> _Request:
    files = []
    for url, digest in entries:
        name = parse_url(url).filename
        if any(f.path == name for f in files):
            raise InvalidSource(f"two --file URLs end in the same file name, {name}")
        files.append(PlannedFile(path=name, url=url, source=url, sha256=digest))
    identity = {"files": [{"url": url, "sha256": digest} for url, digest in entries]}

    def plan(_client: httpx.Client, _policy: RetryPolicy) -> FetchPlan:
        model = model_entry([f.path for f in files], "the --file list")
        return FetchPlan(request=identity, files=tuple(files), model=model)

    return _Request(
        identity=identity, progress_name=FOLDER_PROGRESS, label=f"{len(files)} files", plan=plan
    )


def _hub_request(args: argparse.Namespace) -> _Request:
    hub: HubSource = parse_hub(args.source)
    if hub.file is None and (args.sha256 or args.filename):
        raise InvalidSource(
            "--sha256 and --filename name one file: a snapshot (hf://ORG/REPO) is verified "
            "against the sha256 the Hub lists for each file"
        )
    if hub.file is not None and args.include:
        raise InvalidSource(
            "--include selects files of a snapshot: give hf://ORG/REPO[@REVISION] with it"
        )
    identity: dict[str, Any] = {"source": args.source}
    if hub.file is None:
        identity["include"] = sorted(set(args.include))
    else:
        identity.update(filename=args.filename, sha256=args.sha256)

    def plan(client: httpx.Client, policy: RetryPolicy) -> FetchPlan:
        listing = list_revision(client, hub, policy)
        return plan_hub(hub, listing, args.include, args.sha256, args.filename, identity)

    single = hub.file is not None and split_gguf_parts(hub.file) is None
    name = args.filename or (hub.file.rpartition("/")[2] if hub.file else "")
    return _Request(
        identity=identity,
        progress_name=f".{name}.progress.json" if single else FOLDER_PROGRESS,
        label=name if single else hub.repo,
        plan=plan,
    )


def _fetch(request: _Request, args: argparse.Namespace, progress: ProgressReporter) -> dict:
    """Fetch what `request` asks, unless DEST already holds it whole; return the folder record."""
    record = read_folder_record(args.dest)
    if record is not None and record.get("request") == request.identity:
        print(f"{args.dest} is already verified; nothing to download", file=sys.stderr)
        size = sum(f["size"] for f in record["files"])
        progress.start(size, size)
        return record
    policy = RetryPolicy(retries=max(args.retries, 0), backoff=args.retry_backoff)
    stall = StallRule(seconds=args.stall_timeout, min_bytes_per_second=args.min_bytes_per_second)
    with (
        httpx.Client(
            follow_redirects=True,
            # The read timeout is the stall rule's window: a silent server is a stalled one.
            timeout=httpx.Timeout(stall.seconds, connect=CONNECT_TIMEOUT_SECONDS),
            event_hooks={"response": [refuse_https_downgrade]},
        ) as client,
        contextlib.ExitStack() as stack,
    ):
        # Planned before DEST is touched: a selection that makes no model changes nothing.
        plan = request.plan(client, policy)
        try:
            args.dest.mkdir(parents=True, exist_ok=True)
            # Held until the record is written: `--prune` elsewhere leaves this folder alone.
            stack.enter_context(writing(args.dest))
            drop_folder_record(args.dest)
        except OSError as err:
            raise failure_for_os_error(err, args.dest) from err
        files = fetch_plan_files(client, plan, args.dest, progress, policy, stall, _log)
        record = {"request": plan.request, "model": plan.model, "revision": plan.revision}
        record["files"] = files
        try:
            write_folder_record(args.dest, record)
        except OSError as err:
            raise failure_for_os_error(err, args.dest) from err
    return record


def _done_summary(dest: Path, record: dict, seconds: float) -> dict[str, Any]:
    files = record["files"]
    model = record["model"]
    summary: dict[str, Any] = {"event": "done"}
    if len(files) == 1:
        summary["sha256"] = files[0]["sha256"]
    summary["bytes"] = sum(f["size"] for f in files)
    summary["files"] = len(files)
    if record.get("revision"):
        summary["revision"] = record["revision"]
    summary["seconds"] = round(seconds, 3)
    summary["path"] = str(dest if model == WHOLE_FOLDER else dest / model)
    return summary


def _log(line: str) -> None:
    print(line, file=sys.stderr)


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


def _file_entry_arg(value: str) -> tuple[str, str]:
    try:
        return parse_file_entry(value)
    except InvalidSource as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _sha256_arg(value: str) -> str:
    digest = value.strip().lower()
    if not _SHA256.fullmatch(digest):
        raise argparse.ArgumentTypeError(f"{value!r} is not a sha256 (64 hex digits)")
    return digest
