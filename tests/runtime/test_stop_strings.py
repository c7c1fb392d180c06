"""Stop strings over streamed text."""

from __future__ import annotations

import pytest
from exo_runtime.stop_strings import StopStringFilter
from hypothesis import given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.runtime


@pytest.mark.parametrize(
    ("stops", "pieces", "released", "stopped"),
    [
        ((), ["a", "b"], "ab", False),
        (("END",), ["hel", "lo E", "N", "D more"], "hello ", True),
        (("END",), ["hello E", "NO"], "hello ENO", False),
        (("\n\n", "###"), ["a\n", "b#", "##"], "a\nb", True),
        (("xyz",), ["xy"], "", False),  # held back until it cannot be a stop any more
    ],
)
def test_stop_filter_releases_text_up_to_the_stop(stops, pieces, released, stopped) -> None:
    stop_filter = StopStringFilter(stops)
    out, hit = "", False
    for piece in pieces:
        text, hit = stop_filter.feed(piece)
        out += text
        if hit:
            break
    assert (out, hit) == (released, stopped)


def test_held_text_is_released_at_the_end() -> None:
    stop_filter = StopStringFilter(["xyz"])
    assert stop_filter.feed("abxy") == ("ab", False)
    assert stop_filter.flush() == "xy"


# A small alphabet, so that stop strings occur in the text often.
TEXT = st.text(alphabet="ab\n#é", max_size=40)
STOPS = st.lists(st.text(alphabet="ab\n#é", min_size=1, max_size=4), max_size=4)


def one_shot(text: str, stops: list[str]) -> tuple[str, bool]:
    """The reference, one character at a time as a model generates: at the first point where a
    stop string is complete, the text before the earliest stop string seen so far."""
    stops = [s for s in stops if s]
    for end in range(len(text) + 1):
        hits = [i for i in (text[:end].find(s) for s in stops) if i >= 0]
        if hits:
            return text[: min(hits)], True
    return text, False


@settings(max_examples=500, deadline=None)
@given(text=TEXT, stops=STOPS, data=st.data())
def test_streamed_output_equals_the_one_shot_reference_for_any_split(
    text: str, stops: list[str], data: st.DataObject
) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=10)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    stop_filter = StopStringFilter(stops)
    out, stopped = "", False
    for piece in pieces:
        released, stopped = stop_filter.feed(piece)
        out += released
        if stopped:
            break
    if not stopped:
        out += stop_filter.flush()
    assert (out, stopped) == one_shot(text, stops)
    assert not any(stop in out for stop in stops), "a stop string leaked"
