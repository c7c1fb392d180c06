#!/usr/bin/env python3
"""Fails early when the disk cannot hold what the selected test tiers write (scripts/test.sh).

python3 scripts/disk-preflight.py TIER...
python3 scripts/disk-preflight.py --report     (the free space of each, nothing checked)

Before anything is built, it reads the free space of every filesystem the run writes (the
checkout, $EXO_CACHE, Docker's data root, the temp dir), adds up what the tiers will put on each
(the estimates below, for a cold machine; what is already built counts nothing) and exits 1 with
a message naming the shortfall. Stdlib only: it runs before the project's venv exists.

EXO_DISK_NEED_GB=N   each filesystem must have N GB free instead of the estimate; 0 skips the check
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

# Gigabytes as df -h counts them (GiB), so that its lines and these messages compare.
GB = 1024**3
ALL_TIERS = ("lint", "unit", "fetch", "runtime", "mlx", "kwok", "kind", "e2e")
CLUSTER_TIERS = {"kwok", "kind", "e2e"}


@dataclass(frozen=True)
class Need:
    """What one step writes: `gb` on `place`, at `phase` (the order test.sh runs its steps in).

    A transient need is freed before the next phase (Go's caches once the tools are built)."""

    what: str
    place: str  # repo, cache, docker or tmp
    gb: float
    phase: int
    transient: bool = False


# Phases: 1 the venv, 2 the Kubernetes tools, 3 Docker images and the kind cluster, 4 the tests.
# Figures measured on this project's runs (GB, rounded up); the e2e cluster's figure is the two
# node volumes at the end of a full run (images loaded into each node, fetched models' volumes).
VENV = Need("the Python venv (.venv)", "repo", 1.0, 1)
ALL_TOOLS = (
    Need("Kubernetes tools' binaries", "cache", 0.8, 2),
    Need("Go's caches while the tools build (removed after)", "cache", 10.5, 2, transient=True),
)
HELM = (
    Need("helm's binary", "cache", 0.1, 2),
    Need("Go's caches while helm builds (removed after)", "cache", 1.5, 2, transient=True),
)
TIER_NEEDS = {
    "fetch": (Need("fetched models in pytest's temp dirs", "tmp", 0.5, 4),),
    "runtime": (
        Need("llama-server build", "cache", 0.5, 4),
        Need("model copies in pytest's temp dirs", "tmp", 0.5, 4),
    ),
    "mlx": (
        Need("MLX models", "cache", 1.1, 4),
        Need("converted models in pytest's temp dirs", "tmp", 1.0, 4),
    ),
    "kwok": (Need("kwok's clusters", "cache", 0.2, 4),),
    "kind": (
        Need("Debian base and kind node images", "docker", 1.9, 3),
        Need("the node image's component images", "cache", 0.8, 3),
        Need("the two kind nodes' volumes", "docker", 2.0, 4),
    ),
    "e2e": (
        Need("Debian base and kind node images", "docker", 1.9, 3),
        Need("the node image's component images", "cache", 0.8, 3),
        Need("runtime and operator images and their BuildKit cache", "docker", 2.5, 3),
        # The images loaded into both nodes (1.4 GB each) and the models' volumes: 7.4 GB at the
        # peak of a full run (df and the volumes sampled every 20 s).
        Need("the two kind nodes' volumes", "docker", 7.5, 4),
    ),
}


def needs_of(tiers: Iterable[str], have_venv: bool, have_tools: bool) -> list[Need]:
    """What the tiers write, without what is already there. Tiers share one cluster and one set of
    images: a need two tiers name (same what and place) counts once, at its larger size."""
    tiers = set(tiers)
    needs: list[Need] = [] if have_venv else [VENV]
    if not have_tools:
        if tiers & CLUSTER_TIERS:
            needs += ALL_TOOLS
        elif "unit" in tiers:
            needs += HELM
    largest: dict[tuple[str, str], Need] = {}
    for tier in ALL_TIERS:
        for need in TIER_NEEDS.get(tier, ()) if tier in tiers else ():
            key = (need.what, need.place)
            if key not in largest or need.gb > largest[key].gb:
                largest[key] = need
    return needs + list(largest.values())


def peak_gb(needs: Iterable[Need]) -> float:
    """The most the needs hold at once: what lasts up to a phase plus that phase's transients."""
    needs = list(needs)
    peak = 0.0
    for phase in {n.phase for n in needs}:
        lasting = sum(n.gb for n in needs if not n.transient and n.phase <= phase)
        transient = sum(n.gb for n in needs if n.transient and n.phase == phase)
        peak = max(peak, lasting + transient)
    return peak


@dataclass(frozen=True)
class Filesystem:
    device: int
    mount: str
    free_gb: float


def filesystem_of(path: Path) -> Filesystem:
    """The filesystem that holds path, or would hold it once created."""
    while not path.exists():
        path = path.parent
    mount = path.resolve()
    device = os.stat(mount).st_dev
    while mount != mount.parent and os.stat(mount.parent).st_dev == device:
        mount = mount.parent
    return Filesystem(device, str(mount), shutil.disk_usage(path).free / GB)


def per_filesystem(
    needs: list[Need], places: dict[str, Filesystem]
) -> list[tuple[Filesystem, list[str], list[Need]]]:
    """Each filesystem once, with the places on it and the needs that write there."""
    result = []
    for device in sorted({fs.device for fs in places.values()}):
        names = sorted(p for p, fs in places.items() if fs.device == device)
        result.append((places[names[0]], names, [n for n in needs if n.place in names]))
    return result


def shortfalls(
    needs: list[Need], places: dict[str, Filesystem], need_override: float | None = None
) -> list[str]:
    """One line per filesystem with less free space than the needs put on it (empty: enough)."""
    problems = []
    for fs, names, on_it in per_filesystem(needs, places):
        need = peak_gb(on_it) if need_override is None else need_override
        if fs.free_gb < need:
            detail = "; ".join(f"{n.what} {n.gb:g}" for n in on_it)
            problems.append(
                f"{fs.mount} ({', '.join(names)}) has {fs.free_gb:.1f}G free but needs about "
                f"{need:.1f}G" + (f" ({detail})" if need_override is None and detail else "")
            )
    return problems


def docker_root() -> Path:
    try:
        out = subprocess.run(
            ["/usr/bin/docker", "info", "--format", "{{.DockerRootDir}}"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()  # fmt: skip
        return Path(out or "/var/lib/docker")
    except (OSError, subprocess.SubprocessError):
        return Path("/var/lib/docker")  # dockerd not started yet: its default


def written_places(repo: Path, cache: Path) -> dict[str, Filesystem]:
    """The filesystems a run writes: the checkout (.venv), the caches (tools, models, kind's
    shared volumes), Docker's data root (images, build cache, node volumes), the temp dir."""
    return {
        "repo": filesystem_of(repo),
        "cache": filesystem_of(cache),
        "docker": filesystem_of(docker_root()),
        "tmp": filesystem_of(Path(os.environ.get("TMPDIR", "/tmp"))),
    }


def report(places: dict[str, Filesystem]) -> None:
    """One line of free space per filesystem, for the log after the setup steps."""
    for fs, names, _ in per_filesystem([], places):
        print(f"disk: {fs.mount} ({', '.join(names)}): {fs.free_gb:.1f}G free", file=sys.stderr)


def main(args: set[str]) -> int:
    repo = Path(__file__).resolve().parent.parent
    cache = Path(os.environ.get("EXO_CACHE", Path.home() / ".cache" / "exo-operator"))
    if "--report" in args:
        report(written_places(repo, cache))
        return 0
    tiers = args
    override = os.environ.get("EXO_DISK_NEED_GB")
    need_override = float(override) if override else None
    if need_override == 0:
        print("disk preflight skipped (EXO_DISK_NEED_GB=0)", file=sys.stderr)
        return 0
    tools_bin = Path(os.environ.get("TOOLS_BIN", cache / "bin"))
    have_tools = all((tools_bin / b).exists() for b in ("kubectl", "kind", "kwokctl", "helm"))
    if not tiers & CLUSTER_TIERS and (tools_bin / "helm").exists():
        have_tools = True
    needs = needs_of(tiers, (repo / ".venv" / "bin" / "python").exists(), have_tools)
    places = written_places(repo, cache)
    for fs, names, on_it in per_filesystem(needs, places):
        need = peak_gb(on_it) if need_override is None else need_override
        print(
            f"disk: {fs.mount} ({', '.join(names)}): {fs.free_gb:.1f}G free, "
            f"the tiers need about {need:.1f}G there",
            file=sys.stderr,
        )
    problems = shortfalls(needs, places, need_override)
    for problem in problems:
        print(
            f"not enough free disk for tiers {' '.join(sorted(tiers))}: {problem}", file=sys.stderr
        )
    if problems:
        print(
            "free space there (or pick fewer TIERS); EXO_DISK_NEED_GB=N sets the free GB each "
            "filesystem must have instead of these estimates, 0 skips the check",
            file=sys.stderr,
        )
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(set(sys.argv[1:])))
