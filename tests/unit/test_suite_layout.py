"""The suite's own layout: every tier runs in one pytest session (scripts/test.sh), where test
modules are imported by their basename, so two test files of one name in different tier folders
break the collection of the whole suite."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_every_test_module_has_a_basename_of_its_own() -> None:
    places: defaultdict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("test_*.py"):
        places[path.name].append(str(path.relative_to(TESTS)))
    repeated = {name: paths for name, paths in places.items() if len(paths) > 1}
    assert not repeated, repeated
