"""Reads the JSON lines `exo-runtime fetch` prints (progress, done, failed)."""

import json
from typing import Any


def parse_fetch_event(line: str) -> dict[str, Any] | None:
    """The fetch event on one line, or None for any other line (a plain log line, say)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in {"progress", "done", "failed"}:
        return None
    return event


def last_fetch_event(text: str | None) -> dict[str, Any] | None:
    """The last fetch event in a log or termination message."""
    for line in reversed((text or "").splitlines()):
        event = parse_fetch_event(line)
        if event:
            return event
    return None


def download_progress(event: dict[str, Any] | None) -> dict[str, Any] | None:
    """The status.download block for a progress or done event."""
    if not event:
        return None
    if event["event"] == "done":
        size = event.get("bytes")
        return {"bytes": size, "totalBytes": size} if isinstance(size, int) else None
    if event["event"] != "progress":
        return None
    out: dict[str, Any] = {}
    for key in ("bytes", "totalBytes"):
        if isinstance(event.get(key), int):
            out[key] = event[key]
    for key in ("bytesPerSecond", "etaSeconds"):
        if isinstance(event.get(key), int | float):
            out[key] = round(float(event[key]), 1)
    return out or None
