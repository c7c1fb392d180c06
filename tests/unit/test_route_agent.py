"""The route agent's pure logic (routes, stale routes, CNI config, nat rule) is tested in Go; the
kind tier runs the agent itself on a two-node cluster (tests/kind/test_kind_multinode.py)."""

import subprocess

from fixtures.paths import REPO_ROOT


def test_route_agent_unit_tests_pass() -> None:
    result = subprocess.run(
        ["go", "test", "./..."], cwd=REPO_ROOT / "routeagent",
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
