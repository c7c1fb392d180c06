"""A daemon that a script starts keeps none of the script's descriptors: not its lock, not a pipe.

On a fresh machine the first `make kind` starts dockerd from inside scripts/kind.sh, which holds
the cluster's lock (flock on a descriptor). A dockerd that inherits that descriptor holds the lock
for as long as it runs, so every later `make kind-down` or `make kind` on the cluster waited 15
minutes and failed. Here that order runs for real: dockerd not running, `make kind`, `make
kind-down`, `make kind`. The dockerd is the test's own (own socket, data root, state and network
namespace, no iptables rules), started by scripts/docker.sh through its DOCKERD setting, so the
machine's daemon and its network are never stopped or touched. The test's cache has no tools,
so each step ends right after the parts under test (the lock, then dockerd's start) with
"missing in ...".
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fixtures.descriptors import holders, pipe_link, processes_mentioning
from fixtures.paths import REPO_ROOT

pytestmark = pytest.mark.kind

DOCKERD = Path("/usr/sbin/dockerd")
CLUSTER = "descriptor-check"
# The lock wait that used to fail was 900 s; each step here takes seconds (dockerd's start most).
STEP_BOUND_S = 90
# Variables of the caller that would point the steps at the machine's tools or make's jobserver.
DROPPED_ENV = ("TOOLS_BIN", "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "KIND_CLUSTER", "KIND_NODES")


@dataclass
class OwnDocker:
    root: Path
    env: dict[str, str]

    @property
    def lock(self) -> str:
        return str(self.root / "cache" / "kind" / f"{CLUSTER}.lock")


@pytest.fixture
def own_docker() -> Iterator[OwnDocker]:
    """Settings under which scripts/docker.sh starts a dockerd of the test's own (not yet up)."""
    if not os.access(DOCKERD, os.X_OK):
        pytest.fail(f"{DOCKERD} is missing: run scripts/docker.sh up", pytrace=False)
    # Short: the daemon's and its containerd's unix sockets live under it (108-byte limit).
    root = Path(tempfile.mkdtemp(prefix="exo-fd-", dir="/tmp"))
    wrapper = root / "dockerd"
    wrapper.write_text(
        "#!/bin/sh\n"
        # A network namespace of its own: a second dockerd on the host's would take over (or,
        # with --bridge none, delete) the docker0 bridge the machine's daemon relies on.
        f"exec unshare --net {DOCKERD} --host unix://{root}/docker.sock \\\n"
        f"  --data-root {root}/data --exec-root {root}/exec --pidfile {root}/docker.pid \\\n"
        '  --iptables=false "$@"\n'
    )
    wrapper.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in DROPPED_ENV}
    env |= {
        "EXO_CACHE": str(root / "cache"),
        "DOCKERD": str(wrapper),
        "DOCKER_HOST": f"unix://{root}/docker.sock",
        "KIND_CLUSTER": CLUSTER,
    }
    yield OwnDocker(root, env)
    subprocess.run(
        ["bash", "scripts/docker.sh", "down"], cwd=REPO_ROOT, env=env, capture_output=True,
        timeout=60, check=False,
    )  # fmt: skip
    for pid in processes_mentioning(str(root)):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(root, ignore_errors=True)


def make(target: str, own: OwnDocker, caller_pipe: int) -> tuple[str, float]:
    """Runs `make target` with a pipe of the caller's open on one more descriptor (as make's
    jobserver or a test harness would leave it); returns its stderr and how long it took."""
    started = time.monotonic()
    try:
        result = subprocess.run(
            ["make", "--no-print-directory", target], cwd=REPO_ROOT, env=own.env,
            capture_output=True, text=True, timeout=STEP_BOUND_S, pass_fds=(caller_pipe,),
        )  # fmt: skip
    except subprocess.TimeoutExpired as timeout:
        pytest.fail(
            f"`make {target}` ran past {STEP_BOUND_S} s (waiting on the lock?): {timeout.stderr}",
            pytrace=False,
        )
    took = time.monotonic() - started
    # The step got past the lock and the daemon's start, to the tools this cache lacks.
    assert "waiting for it" not in result.stderr, result.stderr
    assert result.returncode != 0 and "missing in" in result.stderr, result.stderr
    return result.stderr, took


def test_kind_up_down_up_on_a_fresh_machine_never_waits_on_a_lock(own_docker: OwnDocker) -> None:
    read_end, write_end = os.pipe()
    try:
        caller_pipe = pipe_link(write_end)
        durations = {}
        for step, target, says in (
            ("first make kind", "kind", "starting dockerd"),
            ("make kind-down", "kind-down", ""),
            ("second make kind", "kind", "docker daemon already running"),
        ):
            stderr, durations[step] = make(target, own_docker, write_end)
            assert says in stderr, stderr
            kept_lock = holders(own_docker.lock)
            assert not kept_lock, f"after {step}, these keep the cluster's lock: {kept_lock}"
            kept_pipe = holders(caller_pipe)
            kept_pipe.pop(os.getpid(), None)  # this test's own end
            assert not kept_pipe, f"after {step}, these keep the caller's pipe: {kept_pipe}"
        # Closing our end must leave the pipe with no writer at all: its reader sees the end.
        os.close(write_end)
        write_end = -1
        os.set_blocking(read_end, False)
        assert os.read(read_end, 1) == b""
        print("\n" + ", ".join(f"{step}: {took:.1f} s" for step, took in durations.items()))
    finally:
        os.close(read_end)
        if write_end >= 0:
            os.close(write_end)
    stopped = subprocess.run(
        ["bash", "scripts/docker.sh", "down"], cwd=REPO_ROOT, env=own_docker.env,
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert stopped.returncode == 0, stopped.stderr
