"""`exo-operator run`'s command line."""

import pytest
from exo_operator.cli import build_parser, peering_priority


def test_defaults_are_all_namespaces_standalone_plain_logs():
    args = build_parser().parse_args(["run"])
    assert not args.namespace and not args.peering and args.log_format == "plain"


def test_namespaces_repeat_and_peering_names_the_ha_group():
    args = build_parser().parse_args(["run", "-n", "a", "--namespace", "b", "--peering", "exo"])
    assert args.namespace == ["a", "b"] and args.peering == "exo"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--all-namespaces", "--namespace", "a"],
        ["run", "--standalone", "--peering", "x"],
        ["run", "--log-format", "xml"],
        [],
    ],
)
def test_contradictions_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_replicas_of_one_peering_get_distinct_priorities_unless_one_is_given():
    # kopf freezes every peer when two share the highest priority: identical pods must differ.
    drawn = {peering_priority(None, "exo-operator") for _ in range(20)}
    assert len(drawn) == 20 and min(drawn) > 0
    assert peering_priority(7, "exo-operator") == 7
    assert peering_priority(None, None) == 0
