"""`exo-runtime serve` flags, their EXO_* variables, and refusals of bad values."""

from __future__ import annotations

import pytest
from exo_runtime.cli import build_parser

pytestmark = pytest.mark.runtime


def test_environment_variables_set_defaults_and_flags_win(monkeypatch) -> None:
    monkeypatch.setenv("EXO_MODEL", "/models/m.gguf")
    monkeypatch.setenv("EXO_CONTEXT_LENGTH", "2048")
    monkeypatch.setenv("EXO_TENSOR_SPLIT", "0.25,0.75")
    monkeypatch.setenv("EXO_PARALLEL", "4")
    args = build_parser().parse_args(["serve", "--parallel", "2"])
    assert args.model == "/models/m.gguf"
    assert args.context_length == 2048
    assert args.tensor_split == (0.25, 0.75)
    assert args.parallel == 2


def test_limits_and_the_api_key_read_their_environment_variables(monkeypatch) -> None:
    monkeypatch.setenv("EXO_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("EXO_MAX_PROMPT_BYTES", "1024")
    monkeypatch.setenv("EXO_MAX_CONCURRENT_REQUESTS", "7")
    monkeypatch.setenv("EXO_MAX_FAILED_STEPS", "5")
    monkeypatch.setenv("EXO_API_KEY", "k3y")
    args = build_parser().parse_args(["serve", "--max-prompt-bytes", "512"])
    assert (args.max_body_bytes, args.max_prompt_bytes) == (2048, 512)
    assert (args.max_concurrent_requests, args.max_failed_steps) == (7, 5)
    assert args.api_key == "k3y"


def test_defaults_without_environment() -> None:
    args = build_parser().parse_args(["serve", "--model", "m.gguf"])
    assert (args.port, args.engine, args.gpu_layers, args.max_queue) == (8000, "auto", None, 64)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tensor-split", "a,b"], "comma-separated numbers"),
        (["--tensor-split=-1,2"], "non-negative"),
        (["--parallel", "0"], "at least 1"),
        (["--max-queue", "-1"], "0 or more"),
        (["--max-body-bytes", "0"], "at least 1"),
        (["--max-concurrent-requests", "0"], "at least 1"),
        (["--engine", "vllm"], "invalid choice"),
    ],
)
def test_bad_flag_values_are_refused_with_the_reason(argv, message, capsys) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", "--model", "m.gguf", *argv])
    assert exited.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_environment_value_names_the_variable(monkeypatch, capsys) -> None:
    monkeypatch.setenv("EXO_THREADS", "many")
    with pytest.raises(SystemExit):
        build_parser()
    assert "EXO_THREADS='many' is invalid" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--chat-template-file", "/nonexistent/t.jinja"], "cannot be read"),
        (["--chat-template-file", "/dev/null", "--chat-template", "chatml-tools"], "not both"),
    ],
)
def test_a_chat_template_file_that_cannot_be_used_stops_serve_at_once(
    argv: list[str], message: str, capsys
) -> None:
    from exo_runtime.cli import main

    assert main(["serve", "--model", "m.gguf", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_chat_template_file_reads_its_environment_variable(monkeypatch) -> None:
    monkeypatch.setenv("EXO_CHAT_TEMPLATE_FILE", "/templates/tools.jinja")
    assert build_parser().parse_args(["serve"]).chat_template_file == "/templates/tools.jinja"
