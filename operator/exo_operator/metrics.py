"""The operator's Prometheus metrics: models by phase, status writes, child applies, API errors,
child events and the time each reconcile takes.

The reconciler calls the hooks where each thing happens; `serve` exposes them at /metrics.
"""

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)

ModelKey = tuple[str, str]  # (namespace, name)

# Every phase `status.aggregate` reports; each is exported, at 0 when no model is in it, so a
# dashboard sees a phase empty out instead of its series vanishing.
PHASES = ("Pending", "Downloading", "Loading", "Ready", "Degraded", "Failed")


class OperatorMetrics:
    """The operator's metrics in one registry: the process-wide one unless a test passes one."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.models = Gauge(
            "exo_operator_models",
            "ExoModels by the phase the operator last derived for them.",
            ["phase"],
            registry=registry,
        )
        self.status_writes = Counter(
            "exo_operator_status_writes",
            "ExoModel status patches the apiserver accepted.",
            registry=registry,
        )
        self.child_applies = Counter(
            "exo_operator_child_applies",
            "Server-side applies of children (Deployment, Service, Job, PVC) that succeeded.",
            ["kind"],
            registry=registry,
        )
        self.child_deletes = Counter(
            "exo_operator_child_deletes",
            "Children the operator deleted: fetch Jobs superseded or not proving the cache.",
            ["kind"],
            registry=registry,
        )
        self.api_errors = Counter(
            "exo_operator_api_errors",
            "Writes to the apiserver that failed: refused or not answered.",
            ["operation"],
            registry=registry,
        )
        self.child_events = Counter(
            "exo_operator_child_events",
            "Watch events of children (pods, Jobs, Deployments, ...) that asked for a reconcile.",
            ["resource"],
            registry=registry,
        )
        # From well under a millisecond (nothing to do) to seconds (an apiserver under load).
        self.reconcile_seconds = Histogram(
            "exo_operator_reconcile_seconds",
            "Time of one reconcile of one ExoModel, its applies and status write included.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=registry,
        )
        self._phases: dict[ModelKey, str] = {}
        for phase in PHASES:
            self.models.labels(phase=phase).set(0)

    def model_phase(self, key: ModelKey, phase: str) -> None:
        """Records the phase just derived for one model."""
        before = self._phases.get(key)
        if before == phase:
            return
        self._phases[key] = phase
        # Only the two phases involved move: recounting every model on every reconcile made
        # the reconciles of N models cost N^2.
        if before is not None:
            self.models.labels(phase=before).dec()
        self.models.labels(phase=phase).inc()

    def forget_model(self, key: ModelKey) -> None:
        """Drops a deleted model from the counts."""
        before = self._phases.pop(key, None)
        if before is not None:
            self.models.labels(phase=before).dec()

    def status_written(self) -> None:
        self.status_writes.inc()

    def child_event(self, resource: str) -> None:
        self.child_events.labels(resource=resource).inc()

    def reconciled(self, seconds: float) -> None:
        self.reconcile_seconds.observe(seconds)

    def child_applied(self, kind: str) -> None:
        self.child_applies.labels(kind=kind).inc()

    def child_deleted(self, kind: str) -> None:
        self.child_deletes.labels(kind=kind).inc()

    def api_error(self, operation: str) -> None:
        """A failed write; operation is what was attempted (`apply` or `status`)."""
        self.api_errors.labels(operation=operation).inc()


METRICS = OperatorMetrics()


def serve(port: int, address: str) -> None:
    """Serves the process-wide registry at http://address:port/metrics from a daemon thread."""
    start_http_server(port, addr=address, registry=REGISTRY)
