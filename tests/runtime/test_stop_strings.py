"""Stop strings over streamed text."""

from __future__ import annotations

import pytest
from exo_runtime.stop_strings import StopStringFilter

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
