"""Reading the JSON lines `exo-runtime fetch` and `exo-runtime serve` print."""

import pytest
from exo_operator.runtime_events import (
    FETCH_EVENTS,
    SERVE_EVENTS,
    download_progress,
    last_event,
    parse_event,
    reported_context_length,
    reported_engine,
    step_seconds,
)

PROGRESS = (
    '{"event":"progress","state":"downloading","bytes":100,"totalBytes":400,'
    '"bytesPerSecond":50.04,"etaSeconds":6}'
)


def test_last_progress_line_wins_and_plain_lines_are_ignored():
    log = "starting\n" + PROGRESS.replace("100", "50") + "\n" + PROGRESS + "\nnot json {\n"
    event = last_event(log, FETCH_EVENTS)
    assert download_progress(event) == {
        "bytes": 100,
        "totalBytes": 400,
        "bytesPerSecond": 50.0,
        "etaSeconds": 6.0,
    }


def test_done_reports_the_full_size_and_failed_none():
    assert download_progress(
        parse_event('{"event":"done","bytes":7,"sha256":"x"}', FETCH_EVENTS)
    ) == {
        "bytes": 7,
        "totalBytes": 7,
    }
    assert (
        download_progress(parse_event('{"event":"failed","reason":"NotFound"}', FETCH_EVENTS))
        is None
    )


def test_garbage_is_no_event():
    for line in ["", "{", '{"event":"other"}', "[1]", '{"bytes": 3}']:
        assert parse_event(line, FETCH_EVENTS) is None
    assert last_event(None, FETCH_EVENTS) is None


READY = '{"event": "ready", "loadSeconds": 3.2109, "warmupSeconds": 0.54, "engine": "llamacpp"}'


def test_ready_line_among_serve_logs_gives_load_and_warmup_seconds():
    log = (
        "INFO loaded /models/x.gguf with llamacpp in 3.21s\n" + READY + "\nINFO ready: serving x\n"
    )
    assert step_seconds(last_event(log, SERVE_EVENTS)) == {
        "loadSeconds": 3.211,
        "warmupSeconds": 0.54,
    }


def test_fetch_and_serve_lines_are_told_apart():
    assert parse_event(READY, FETCH_EVENTS) is None
    assert parse_event('{"event":"done","bytes":7}', SERVE_EVENTS) is None
    assert step_seconds(parse_event('{"event":"done","seconds":3}', FETCH_EVENTS)) is None


@pytest.mark.parametrize(
    "fields",
    [
        {"warmupSeconds": 0.5},
        {"loadSeconds": 1.0},
        {"loadSeconds": -1, "warmupSeconds": 0.5},
        {"loadSeconds": "3", "warmupSeconds": 0.5},
        {"loadSeconds": True, "warmupSeconds": 0.5},
        {"loadSeconds": float("nan"), "warmupSeconds": 0.5},
        {"loadSeconds": float("inf"), "warmupSeconds": 0.5},
        {"loadSeconds": None, "warmupSeconds": 0.5},
    ],
)
def test_ready_line_without_two_true_durations_gives_no_step_times(fields):
    assert step_seconds({"event": "ready", **fields}) is None


@pytest.mark.parametrize(
    ("event", "context", "engine"),
    [
        ({"event": "ready", "engine": "mlx", "contextLength": 4096}, 4096, "mlx"),
        ({"event": "ready", "engine": "llamacpp", "contextLength": 512}, 512, "llamacpp"),
        ({"event": "ready"}, None, None),  # a runtime older than the field
        ({"event": "ready", "engine": "vllm", "contextLength": "4096"}, None, None),
        ({"event": "ready", "engine": None, "contextLength": 4096.0}, None, None),
        ({"event": "ready", "contextLength": True}, None, None),
        ({"event": "ready", "contextLength": -1}, None, None),
        ({"event": "done", "engine": "mlx", "contextLength": 4096}, None, None),
        (None, None, None),
    ],
)
def test_ready_line_gives_the_context_and_engine_in_use(event, context, engine):
    assert reported_context_length(event) == context
    assert reported_engine(event) == engine
