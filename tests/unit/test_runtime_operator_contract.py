"""The contract between the operator and the runtime, held together without a cluster.

The operator writes the runtime's command lines and reads the lines the runtime prints; the CRD
declares the defaults the operator's model declares again. Each side is defined once, in its
own package; these tests fail when one side changes and the other does not, in a second rather
than in the e2e tier's fifteen minutes.
"""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from _models import SHA, body, model
from exo_operator.cache_proof import CACHE_NOT_VERIFIED_MARK
from exo_operator.children.deployment import serve_args
from exo_operator.children.fetch_job import fetch_args
from exo_operator.model import ExoModel
from exo_operator.runtime_events import SERVE_EVENTS, last_event, step_seconds
from exo_operator.settings import OperatorSettings
from exo_operator.status import pod_problem
from exo_runtime import server
from exo_runtime.cache_check import NOT_VERIFIED
from exo_runtime.chat_template import read_override
from exo_runtime.cli import build_parser
from exo_runtime.rpc_workers import lost_worker_line, parse_endpoint

CRD = Path(__file__).parents[2] / "crds" / "exo.dev_exomodels.yaml"
SETTINGS = OperatorSettings(runtime_image="exo-runtime:dev")

SPECS: dict[str, dict[str, Any]] = {
    "a bare url": {},
    "a url with its sha256 and every engine argument": {
        "source": {"url": "https://models.example/m.gguf", "sha256": SHA},
        "engine": "llamacpp",
        "engineArgs": {
            "contextLength": 2048,
            "threads": 3,
            "batchSize": 256,
            "parallel": 4,
            "gpuLayers": 10,
            "tensorSplit": [0.5, 0.5],
        },
        "resources": {"gpus": 2},
        "chatTemplate": "{{ messages }}",
        "warmup": {"prompt": "Hi", "maxTokens": 2},
    },
    "a Hub file with a token": {
        "source": {
            "huggingFace": {
                "repo": "org/repo",
                "file": "m.gguf",
                "revision": "abc",
                "tokenSecretRef": {"name": "hf"},
            }
        }
    },
    "a Hub snapshot": {"source": {"huggingFace": {"repo": "org/repo", "include": ["*.json"]}}},
    "files with their sha256": {
        "source": {
            "files": [
                {"url": "https://m.example/config.json", "sha256": SHA},
                {"url": "https://m.example/model.safetensors", "sha256": SHA},
            ]
        },
        "engine": "mlx",
    },
    "an existing claim": {"source": {"pvc": {"claimName": "models", "path": "m.gguf"}}},
    "a model split over RPC workers": {
        "resources": {"gpus": 1},
        "distributed": {"workers": 2, "tensorSplit": [2, 1, 1]},
    },
}


def parse(argv: list[str]) -> Any:
    """The runtime's own parser on `argv`; its complaint, if any, fails the test by name."""
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"exo-runtime refused {argv}: {err.getvalue().strip()}")


@pytest.mark.parametrize("spec", SPECS.values(), ids=SPECS.keys())
def test_every_serve_flag_the_operator_writes_is_accepted_by_the_runtime(spec) -> None:
    m = model(**spec)
    args = parse(serve_args(m, SETTINGS))
    assert args.command == "serve"
    assert args.model_name == m.name
    assert args.engine == m.spec.engine
    assert args.port == SETTINGS.runtime_port
    assert args.require_verified is (m.spec.source.pvc is None)


@pytest.mark.parametrize(
    "spec", [s for s in SPECS.values() if "pvc" not in s.get("source", {})], ids=str
)
def test_every_fetch_flag_the_operator_writes_is_accepted_by_the_runtime(spec) -> None:
    args = parse(fetch_args(model(**spec)))
    assert args.command == "fetch"
    assert args.prune is True


def test_the_ready_line_the_runtime_prints_is_read_by_the_operator(capsys) -> None:
    class Engine:
        name = "llamacpp"
        context_length = 4096

    class State:
        load_seconds = 1.23456
        warmup_seconds = 0.5
        engine = Engine()

    server.report_ready(State())  # type: ignore[arg-type]
    printed = capsys.readouterr().out
    event = last_event("some log line\n" + printed, SERVE_EVENTS)
    assert event is not None, printed
    assert event["engine"] == "llamacpp" and event["contextLength"] == 4096
    assert step_seconds(event) == {"loadSeconds": 1.235, "warmupSeconds": 0.5}


def _terminated_pod(message: str) -> dict[str, Any]:
    terminated = {"exitCode": 1, "reason": "Error", "message": message}
    status = {"containerStatuses": [{"name": "runtime", "state": {"terminated": terminated}}]}
    return {"metadata": {"name": "p"}, "status": status}


@pytest.mark.parametrize(
    ("reason", "finding"),
    [
        ("unknown model format: m.bin", "LoadFailed"),
        (f"{NOT_VERIFIED}: /models/m.gguf has no record", "CacheNotVerified"),
    ],
)
def test_the_load_failure_the_runtime_reports_is_read_by_the_operator(
    reason, finding, tmp_path, monkeypatch, capsys
) -> None:
    log = tmp_path / "termination-log"
    monkeypatch.setattr(server, "TERMINATION_LOG", str(log))
    server.report_load_failure(reason)
    message = log.read_text()
    assert capsys.readouterr().err == message
    found = pod_problem(_terminated_pod(message))
    assert found is not None and found.reason == finding
    assert reason in found.message
    if finding == "CacheNotVerified":
        assert message.startswith(CACHE_NOT_VERIFIED_MARK)


def test_a_shipped_template_named_in_the_spec_is_found_by_the_runtime() -> None:
    args = parse(serve_args(model(chatTemplate="chatml-tools"), SETTINGS))
    assert "tools" in read_override(args.chat_template)


def test_the_line_of_a_head_that_lost_a_worker_is_read_by_the_operator() -> None:
    endpoint = parse_endpoint("split-workers-1.split-workers.ml.svc:50052")
    found = pod_problem(_terminated_pod(lost_worker_line(endpoint, "it closed the connection")))
    assert found is not None and found.reason == "WorkerLost"
    assert str(endpoint) in found.message


def _defaults(schema: dict[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """Every scalar default the CRD declares, by its path of property names."""
    found = {}
    for name, prop in (schema.get("properties") or {}).items():
        here = (*path, name)
        if "default" in prop and prop["default"] != {}:
            found[here] = prop["default"]
        found.update(_defaults(prop, here))
    return found


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def _minimal_body_reaching(path: tuple[str, ...]) -> dict[str, Any]:
    """The smallest spec that has the object holding `path`'s last property."""
    if path[:2] == ("source", "huggingFace"):
        return body(source={"huggingFace": {"repo": "org/repo", "tokenSecretRef": {"name": "s"}}})
    if path[0] == "apiKeySecretRef":
        return body(apiKeySecretRef={"name": "k"})
    return body()


def test_the_crds_defaults_are_the_operators_defaults() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    defaults = _defaults(schema)
    assert len(defaults) >= 8, defaults  # the walk found them
    for path, declared in defaults.items():
        value: Any = ExoModel.from_body(_minimal_body_reaching(path)).spec
        for name in path:
            value = getattr(value, _snake(name))
        assert value == declared, f"spec.{'.'.join(path)}: CRD {declared!r}, operator {value!r}"
