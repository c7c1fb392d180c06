"""Reading `exo-runtime fetch`'s JSON lines."""

from exo_operator.fetch_events import download_progress, last_fetch_event, parse_fetch_event

PROGRESS = (
    '{"event":"progress","state":"downloading","bytes":100,"totalBytes":400,'
    '"bytesPerSecond":50.04,"etaSeconds":6}'
)


def test_last_progress_line_wins_and_plain_lines_are_ignored():
    log = "starting\n" + PROGRESS.replace("100", "50") + "\n" + PROGRESS + "\nnot json {\n"
    event = last_fetch_event(log)
    assert download_progress(event) == {
        "bytes": 100,
        "totalBytes": 400,
        "bytesPerSecond": 50.0,
        "etaSeconds": 6.0,
    }


def test_done_reports_the_full_size_and_failed_none():
    assert download_progress(parse_fetch_event('{"event":"done","bytes":7,"sha256":"x"}')) == {
        "bytes": 7,
        "totalBytes": 7,
    }
    assert download_progress(parse_fetch_event('{"event":"failed","reason":"NotFound"}')) is None


def test_garbage_is_no_event():
    for line in ["", "{", '{"event":"other"}', "[1]", '{"bytes": 3}']:
        assert parse_fetch_event(line) is None
    assert last_fetch_event(None) is None
