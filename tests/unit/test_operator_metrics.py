"""The operator's Prometheus metrics: the hooks move real prometheus-client series."""

import socket
import urllib.request

import pytest
from exo_operator import metrics
from exo_operator.cli import build_parser, main
from exo_operator.metrics import PHASES, OperatorMetrics
from fixtures.net import free_port
from prometheus_client import CollectorRegistry


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def _models(registry: CollectorRegistry, phase: str) -> float | None:
    return registry.get_sample_value("exo_operator_models", {"phase": phase})


def test_models_are_counted_by_their_latest_phase(registry):
    m = OperatorMetrics(registry)
    assert all(_models(registry, phase) == 0 for phase in PHASES)
    m.model_phase(("a", "one"), "Downloading")
    m.model_phase(("a", "two"), "Downloading")
    m.model_phase(("b", "one"), "Ready")
    assert _models(registry, "Downloading") == 2 and _models(registry, "Ready") == 1
    m.model_phase(("a", "one"), "Loading")
    assert _models(registry, "Downloading") == 1 and _models(registry, "Loading") == 1


def test_a_forgotten_model_leaves_its_phase(registry):
    m = OperatorMetrics(registry)
    m.model_phase(("a", "one"), "Ready")
    m.forget_model(("a", "one"))
    m.forget_model(("a", "never-seen"))
    assert _models(registry, "Ready") == 0


def test_counters_count_each_call(registry):
    m = OperatorMetrics(registry)
    m.status_written()
    m.status_written()
    m.child_applied("Deployment")
    m.child_applied("Service")
    m.child_applied("Deployment")
    m.api_error("apply")
    value = registry.get_sample_value
    assert value("exo_operator_status_writes_total") == 2
    assert value("exo_operator_child_applies_total", {"kind": "Deployment"}) == 2
    assert value("exo_operator_child_applies_total", {"kind": "Service"}) == 1
    assert value("exo_operator_api_errors_total", {"operation": "apply"}) == 1


def test_serve_exposes_the_process_registry_over_http():
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    metrics.METRICS.status_written()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    assert "exo_operator_status_writes_total " in text
    assert 'exo_operator_models{phase="Ready"}' in text


def test_metrics_are_off_unless_a_port_is_given():
    args = build_parser().parse_args(["run"])
    assert args.metrics_port == 0 and args.metrics_address == "127.0.0.1"
    args = build_parser().parse_args(["run", "--metrics-port", "8081", "--metrics-address", "::"])
    assert args.metrics_port == 8081 and args.metrics_address == "::"


@pytest.mark.parametrize("port", ["http", "-1", "65536"])
def test_a_bad_metrics_port_is_refused(port, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["run", "--metrics-port", port])
    assert exit_info.value.code == 2
    assert "--metrics-port" in capsys.readouterr().err


def test_a_taken_metrics_port_stops_the_operator_with_a_clear_error(capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["run", "--metrics-port", str(port)]) == 2
    assert f"cannot serve metrics on 127.0.0.1:{port}" in capsys.readouterr().err


def test_child_events_are_counted_by_resource_and_reconciles_are_timed(registry):
    m = OperatorMetrics(registry)
    m.child_event("pods")
    m.child_event("pods")
    m.child_event("jobs")
    m.reconciled(0.003)
    m.reconciled(0.2)
    events = "exo_operator_child_events_total"
    assert registry.get_sample_value(events, {"resource": "pods"}) == 2
    assert registry.get_sample_value(events, {"resource": "jobs"}) == 1
    assert registry.get_sample_value("exo_operator_reconcile_seconds_count") == 2
    under_10ms = registry.get_sample_value("exo_operator_reconcile_seconds_bucket", {"le": "0.01"})
    assert under_10ms == 1


def test_a_model_reported_twice_in_one_phase_counts_once(registry):
    m = OperatorMetrics(registry)
    m.model_phase(("a", "one"), "Ready")
    m.model_phase(("a", "one"), "Ready")
    m.model_phase(("a", "one"), "Unheard-of")
    assert _models(registry, "Ready") == 0 and _models(registry, "Unheard-of") == 1
