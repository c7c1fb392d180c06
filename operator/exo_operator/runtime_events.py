"""Reads the JSON lines `exo-runtime` prints: fetch's progress, done and failed; serve's ready."""

import json
import math
from collections.abc import Collection
from typing import Any

FETCH_EVENTS = frozenset({"progress", "done", "failed"})
SERVE_EVENTS = frozenset({"ready"})


def parse_event(line: str, kinds: Collection[str]) -> dict[str, Any] | None:
    """The event of one of `kinds` on one line, or None for any other line (a plain log line)."""
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    if not isinstance(event, dict) or event.get("event") not in kinds:
        return None
    return event


def last_event(text: str | None, kinds: Collection[str]) -> dict[str, Any] | None:
    """The last event of one of `kinds` in a log or termination message."""
    for line in reversed((text or "").splitlines()):
        event = parse_event(line, kinds)
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


def step_seconds(event: dict[str, Any] | None) -> dict[str, float] | None:
    """status.timings' loadSeconds and warmupSeconds from a ready event; None unless both are
    non-negative numbers."""
    if not event or event.get("event") != "ready":
        return None
    out = {}
    for key in ("loadSeconds", "warmupSeconds"):
        value = event.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        if not (math.isfinite(value) and value >= 0):
            return None
        # Milliseconds: a small model's warmup takes well under the 0.1 s of the other steps.
        out[key] = round(float(value), 3)
    return out


# What a ready line may say of the engine (the runtime's exo_runtime.selector.ENGINES).
ENGINES = frozenset({"llamacpp", "mlx"})


def reported_context_length(event: dict[str, Any] | None) -> int | None:
    """The context, in tokens per sequence, that a ready event says the engine uses."""
    if not event or event.get("event") != "ready":
        return None
    value = event.get("contextLength")
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return value


def reported_engine(event: dict[str, Any] | None) -> str | None:
    """The engine a ready event says the runtime loaded the model with."""
    if not event or event.get("event") != "ready":
        return None
    value = event.get("engine")
    return value if value in ENGINES else None
