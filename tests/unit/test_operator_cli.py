"""`exo-operator run`'s command line."""

import pytest
from exo_operator.cli import build_parser


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
