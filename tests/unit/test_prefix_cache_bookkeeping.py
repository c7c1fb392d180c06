"""The prefix cache's bookkeeping: longest match, what is kept, what goes first."""

from __future__ import annotations

import pytest
from exo_runtime.prefix_cache import PrefixCache, PrefixMatch, common_prefix_length

BASE = list(range(100, 140))  # 40 tokens


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([], [], 0),
        ([1, 2, 3], [], 0),
        ([1, 2, 3], [1, 2, 3], 3),
        ([1, 2, 3], [1, 2], 2),
        ([1, 2, 3], [1, 9, 3], 1),
        ([7], [8], 0),
    ],
)
def test_common_prefix_length(a: list[int], b: list[int], expected: int) -> None:
    assert common_prefix_length(a, b) == expected
    assert common_prefix_length(b, a) == expected


def test_longest_shared_prefix_wins() -> None:
    cache = PrefixCache(4, min_tokens=4)
    cache.store(0, [*BASE[:10], 1, 1, 1])
    cache.store(1, [*BASE[:30], 2, 2])
    cache.store(2, BASE[:20])
    assert cache.match([*BASE, 5]) == PrefixMatch(slot=1, tokens=30, entry_length=32)


def test_tie_goes_to_the_most_recent_entry() -> None:
    cache = PrefixCache(4, min_tokens=4)
    cache.store(0, [*BASE[:20], 1])
    cache.store(1, [*BASE[:20], 2])
    assert cache.match(BASE).slot == 1
    cache.touch(0)
    assert cache.match(BASE).slot == 0


def test_the_last_prompt_token_is_never_reused() -> None:
    # Its logits give the first new token, so it is decoded again even when all is cached.
    cache = PrefixCache(4, min_tokens=4)
    cache.store(0, [*BASE, 7, 8])
    assert cache.match(BASE).tokens == len(BASE) - 1


@pytest.mark.parametrize(
    ("shared", "matches"),
    [(15, False), (16, True), (17, True)],
)
def test_a_match_shorter_than_the_minimum_is_none(shared: int, matches: bool) -> None:
    cache = PrefixCache(4, min_tokens=16)
    cache.store(0, BASE)
    prompt = BASE[:shared] + [999] * 5
    assert (cache.match(prompt) is not None) is matches


def test_an_entry_shorter_than_the_minimum_is_not_kept() -> None:
    cache = PrefixCache(4, min_tokens=16)
    assert cache.store(3, BASE[:15]) == [3]
    assert len(cache) == 0


def test_capacity_zero_keeps_nothing() -> None:
    cache = PrefixCache(0)
    assert cache.store(0, BASE) == [0]
    assert cache.match([*BASE, 1]) is None


def test_past_capacity_the_least_recently_used_entry_is_freed() -> None:
    cache = PrefixCache(2, min_tokens=4)
    assert cache.store(0, [1] * 8) == []
    assert cache.store(1, [2] * 8) == []
    cache.touch(0)  # now 1 is the oldest
    assert cache.store(2, [3] * 8) == [1]
    assert 1 not in cache and 0 in cache and 2 in cache


def test_an_entry_the_new_one_contains_is_freed() -> None:
    # The next turn of a conversation holds the previous turn entire: the old entry could only
    # ever answer what the new one answers too.
    cache = PrefixCache(4, min_tokens=4)
    cache.store(0, BASE[:20])
    cache.store(1, BASE[:10] + [5] * 10)  # diverges: not contained, kept
    assert cache.store(2, BASE) == [0]
    assert 0 not in cache and 1 in cache and 2 in cache


def test_a_taken_entry_leaves_the_cache() -> None:
    cache = PrefixCache(4, min_tokens=4)
    cache.store(5, BASE)
    assert cache.take(5) == tuple(BASE)
    assert cache.match([*BASE, 1]) is None


def test_pop_oldest_and_clear() -> None:
    cache = PrefixCache(4, min_tokens=4)
    for slot in (3, 1, 2):
        cache.store(slot, [slot] * 8)
    assert cache.pop_oldest() == 3
    assert sorted(cache.clear()) == [1, 2]
    assert len(cache) == 0


def test_negative_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="capacity"):
        PrefixCache(-1)
