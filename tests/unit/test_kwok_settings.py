"""scripts/kwok.sh refuses bad settings and missing tools with a message that says what to do,
before it starts or locks anything, so these need no cluster (tests/kwok/harness/ runs the rest)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.kwok import kwok_script


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("KWOK_NODES", "four", "KWOK_NODES='four' must be a whole number"),
        ("KWOK_GPUS_PER_NODE", "-1", "KWOK_GPUS_PER_NODE='-1' must be a whole number"),
        ("KWOK_CLUSTER", "My_Cluster", "KWOK_CLUSTER='My_Cluster' is not a valid name"),
        ("KWOK_NODE_MEMORY", "lots", "KWOK_NODE_MEMORY='lots' must be a quantity"),
        ("KWOK_APISERVER_PORT", "http", "KWOK_APISERVER_PORT='http' must be a port number"),
    ],
)
def test_bad_setting_is_refused_with_a_message_naming_it(
    setting: str, value: str, message: str
) -> None:
    result = kwok_script("up", **{setting: value})
    assert result.returncode != 0
    assert message in result.stderr
    assert result.stdout == ""


def test_missing_tools_say_to_run_make_tools(tmp_path: Path) -> None:
    result = kwok_script("up", TOOLS_BIN=str(tmp_path), KWOK_CLUSTER="never-started")
    assert result.returncode != 0
    assert "run `make tools`" in result.stderr
