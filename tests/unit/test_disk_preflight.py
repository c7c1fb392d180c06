"""scripts/disk-preflight.py: what the tiers need on which filesystem, and when it says no."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "disk-preflight.py"
spec = importlib.util.spec_from_file_location("disk_preflight", SCRIPT)
preflight = importlib.util.module_from_spec(spec)
sys.modules["disk_preflight"] = preflight  # dataclasses look their module up by name
spec.loader.exec_module(preflight)
Need, Filesystem = preflight.Need, preflight.Filesystem
TOOLS = Need("tools", "cache", 1, 2)
KIND = Need("kind", "docker", 4, 3)


@pytest.mark.parametrize(
    ("needs", "peak"),
    [
        ([], 0),
        ([Need("a", "cache", 1, 1), Need("b", "cache", 2, 4)], 3),
        # Go's caches go before the images are built: the peak is the larger of the two phases.
        ([TOOLS, Need("go", "cache", 10, 2, transient=True), KIND], 11),
        ([TOOLS, Need("go", "cache", 2, 2, transient=True), KIND], 5),
    ],
    ids=["nothing", "lasting-adds-up", "transient-peak-wins", "later-lasting-wins"],
)  # fmt: skip
def test_peak_counts_a_transient_need_only_in_its_own_phase(needs, peak):
    assert preflight.peak_gb(needs) == pytest.approx(peak)


def test_a_cold_machine_needs_go_caches_and_a_warm_one_does_not():
    cold = preflight.needs_of({"kwok"}, have_venv=False, have_tools=False)
    warm = preflight.needs_of({"kwok"}, have_venv=True, have_tools=True)
    assert preflight.VENV in cold and any(n.transient for n in cold)
    assert preflight.VENV not in warm and not any(n.transient for n in warm)


def test_the_unit_tier_alone_builds_only_helm():
    assert preflight.needs_of({"unit"}, True, False) == list(preflight.HELM)
    assert set(preflight.ALL_TOOLS) <= set(preflight.needs_of({"unit", "kind"}, True, False))


def test_kind_and_e2e_share_one_cluster_counted_at_its_larger_size():
    needs = preflight.needs_of({"kind", "e2e"}, True, True)
    volumes = [n for n in needs if "kind nodes' volumes" in n.what]
    assert [n.gb for n in volumes] == [7.5]
    assert len([n for n in needs if "node images" in n.what]) == 1


def test_every_tier_but_lint_declares_what_it_writes():
    assert set(preflight.TIER_NEEDS) | {"lint", "unit"} == set(preflight.ALL_TIERS)


SMALL, LARGE = Filesystem(1, "/small", 5.0), Filesystem(2, "/large", 500.0)


def test_a_short_filesystem_is_named_with_its_free_space_need_and_places():
    places = {"repo": LARGE, "cache": LARGE, "docker": SMALL, "tmp": LARGE}
    needs = preflight.needs_of({"e2e"}, True, True)
    [problem] = preflight.shortfalls(needs, places)
    assert problem.startswith("/small (docker) has 5.0G free but needs about 11.9G")
    assert "the two kind nodes' volumes 7.5" in problem


def test_needs_on_one_filesystem_add_up_across_places():
    on_one = {place: Filesystem(1, "/", 14.0) for place in ("repo", "cache", "docker", "tmp")}
    needs = [Need("a", "docker", 10, 3), Need("b", "cache", 5, 3)]
    assert preflight.shortfalls(needs, on_one) != []
    assert preflight.shortfalls(needs[:1], on_one) == []


def test_an_override_replaces_the_estimate_on_every_filesystem():
    places = {"repo": LARGE, "cache": LARGE, "docker": SMALL, "tmp": LARGE}
    assert preflight.shortfalls([], places, need_override=6.0)[0].startswith("/small (docker)")
    assert preflight.shortfalls(preflight.needs_of({"e2e"}, True, True), places, 1.0) == []


def test_a_path_not_yet_made_is_on_its_nearest_existing_parents_filesystem(tmp_path):
    made = preflight.filesystem_of(tmp_path)
    assert preflight.filesystem_of(tmp_path / "not" / "yet") == made
    assert Path(made.mount).is_dir() and made.free_gb > 0


@pytest.mark.parametrize(
    ("need_gb", "code", "says"),
    [("100000", 1, "not enough free disk for tiers unit"), ("0", 0, "preflight skipped")],
    ids=["too-little", "skipped"],
)
def test_the_script_fails_with_a_message_when_told_it_needs_more_than_is_free(need_gb, code, says):
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "unit"],
        env={**os.environ, "EXO_DISK_NEED_GB": need_gb},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == code, result.stderr
    assert says in result.stderr


def test_the_report_names_each_written_filesystem_once_with_its_free_space():
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--report"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("disk: ") and line.endswith("G free") for line in lines)
    named = [place for line in lines for place in line.split("(")[1].split(")")[0].split(", ")]
    assert sorted(named) == ["cache", "docker", "repo", "tmp"]
