"""Bookkeeping of the prefix cache: which idle sequence slots still hold the KV cells of a
finished sequence, for which tokens, and which of them goes first when a slot is needed.

Pure: no model here. The engine keeps the KV cells in the slots and asks this module which
entry matches a new prompt best and which entries to free.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

# Shorter matches are not worth a lookup: a chat template's opening alone is about this long,
# and reusing it saves nothing measurable.
MIN_PREFIX_TOKENS = 16


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


@dataclass(frozen=True)
class PrefixMatch:
    """`slot` holds the KV cells of `tokens` tokens that start the prompt; `entry_length` is
    how many tokens that slot holds in all (more than `tokens` when the entry diverges)."""

    slot: int
    tokens: int
    entry_length: int


class PrefixCache:
    """Finished sequences kept in idle slots, least recently used first out.

    At most `capacity` entries; 0 disables the cache (nothing is kept, nothing matches).
    """

    def __init__(self, capacity: int, min_tokens: int = MIN_PREFIX_TOKENS) -> None:
        if capacity < 0:
            raise ValueError(f"capacity is {capacity}; it must be 0 or more")
        self.capacity = capacity
        self.min_tokens = max(1, min_tokens)
        self._entries: OrderedDict[int, tuple[int, ...]] = OrderedDict()  # oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, slot: int) -> bool:
        return slot in self._entries

    def tokens(self, slot: int) -> tuple[int, ...]:
        return self._entries[slot]

    def match(self, prompt: Sequence[int]) -> PrefixMatch | None:
        """The entry sharing the longest prefix with `prompt`, the most recent on a tie.

        At most len(prompt) - 1 tokens are reused: the last prompt token must be decoded again
        to give the logits of the first new token. None when no entry shares `min_tokens`.
        """
        usable = len(prompt) - 1
        best: PrefixMatch | None = None
        for slot, tokens in reversed(self._entries.items()):  # newest first wins ties
            shared = min(common_prefix_length(tokens, prompt), usable)
            if shared >= self.min_tokens and (best is None or shared > best.tokens):
                best = PrefixMatch(slot, shared, len(tokens))
        return best

    def store(self, slot: int, tokens: Sequence[int]) -> list[int]:
        """Keep `tokens` (whose KV cells `slot` holds) as the newest entry; return the slots to
        free: `slot` itself if it is not worth keeping, entries that the new one contains from
        their first token to their last (it answers every prompt they would), and the oldest
        past `capacity`."""
        if self.capacity == 0 or len(tokens) < self.min_tokens:
            return [slot]
        kept = tuple(tokens)
        freed = [
            other
            for other, held in self._entries.items()
            if other != slot and common_prefix_length(held, kept) == len(held)
        ]
        for other in freed:
            del self._entries[other]
        self._entries[slot] = kept
        self._entries.move_to_end(slot)
        while len(self._entries) > self.capacity:
            freed.append(self.pop_oldest())
        return freed

    def touch(self, slot: int) -> None:
        """`slot` was just used (its cells copied): it goes out last."""
        self._entries.move_to_end(slot)

    def take(self, slot: int) -> tuple[int, ...]:
        """Remove `slot`'s entry: a live sequence takes the slot over, cells and all."""
        return self._entries.pop(slot)

    def pop_oldest(self) -> int:
        """Remove the least recently used entry and return its slot, for a live sequence."""
        slot, _ = self._entries.popitem(last=False)
        return slot

    def clear(self) -> list[int]:
        """Forget every entry; return their slots."""
        slots = list(self._entries)
        self._entries.clear()
        return slots
