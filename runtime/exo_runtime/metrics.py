"""Prometheus metrics of one runtime process (a registry of its own, so tests can read it)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Outcome labels of exo_runtime_requests_total.
OUTCOMES = ("ok", "cancelled", "error", "rejected", "invalid")


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "exo_runtime_requests", "Generation requests by outcome", ["outcome"], registry=r
        )
        for outcome in OUTCOMES:  # every series exists from the start, at zero
            self.requests.labels(outcome)
        self.prompt_tokens = Counter(
            "exo_runtime_prompt_tokens", "Prompt tokens of admitted requests", registry=r
        )
        self.prompt_tokens_cached = Counter(
            "exo_runtime_prompt_tokens_cached",
            "Prompt tokens taken from the prefix cache instead of prefilled; the prefix cache's "
            "hit ratio is this over exo_runtime_prompt_tokens_total",
            registry=r,
        )
        self.generated_tokens = Counter(
            "exo_runtime_generated_tokens", "Tokens generated", registry=r
        )
        self.time_to_first_token = Histogram(
            "exo_runtime_time_to_first_token_seconds",
            "From request arrival to its first generated token",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.queue_depth = Gauge(
            "exo_runtime_queue_depth", "Requests waiting for a free sequence slot", registry=r
        )
        self.active_sequences = Gauge(
            "exo_runtime_active_sequences", "Sequences being generated", registry=r
        )
        self.internal_errors = Counter(
            "exo_runtime_internal_errors",
            "Requests answered 500 because of an unexpected error (a bug)",
            registry=r,
        )
        self.failed_steps = Counter(
            "exo_runtime_failed_engine_steps", "Engine steps that failed", registry=r
        )
        self.engine_failing = Gauge(
            "exo_runtime_engine_failing",
            "1 while the engine has failed --max-failed-steps steps in a row (/healthz 503)",
            registry=r,
        )
        self.load_seconds = Gauge("exo_runtime_load_seconds", "Time to load the model", registry=r)
        self.warmup_seconds = Gauge(
            "exo_runtime_warmup_seconds", "Time to warm the model up", registry=r
        )
