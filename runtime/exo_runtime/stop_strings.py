"""Stop strings over streamed text: hold back only what could still become a stop string."""

from __future__ import annotations


class StopStringFilter:
    """Feed text as it is generated; get back the text safe to send and whether a stop matched.

    Text is released as soon as no stop string can begin in it, so streaming stays
    token by token; the stop string itself is never released.
    """

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""

    def feed(self, text: str) -> tuple[str, bool]:
        if not self._stops:
            return text, False
        held = self._held + text
        first = self._first_stop(held)
        if first >= 0:
            self._held = ""
            return held[:first], True
        keep = self._longest_stop_prefix_suffix(held)
        self._held = held[len(held) - keep :] if keep else ""
        return held[: len(held) - keep], False

    def flush(self) -> str:
        """The text still held back, at the end of the generation."""
        held, self._held = self._held, ""
        return held

    def _first_stop(self, text: str) -> int:
        """Where the answer ends: generation stops as soon as a stop string is complete, so the
        cut is the earliest start among the stops complete by the first point one is (however
        the text was split into pieces), or -1."""
        ends = [i + len(s) for i, s in ((text.find(s), s) for s in self._stops) if i >= 0]
        if not ends:
            return -1
        seen = text[: min(ends)]
        return min(i for i in (seen.find(s) for s in self._stops) if i >= 0)

    def _longest_stop_prefix_suffix(self, text: str) -> int:
        longest = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(text)), longest, -1):
                if text.endswith(stop[:n]):
                    longest = n
                    break
        return longest
