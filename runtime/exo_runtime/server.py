"""The runtime process: its settings, loading and warmup on a thread, the drain on SIGTERM.

The HTTP routes live in app.py, the serving path in serving.py.

The server listens before the model loads, so /healthz and /readyz answer during a long load
(the Kubernetes startup probe relies on it); /readyz turns 200 only after warmup.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn

from exo_runtime.chat_template import choose_chat_template
from exo_runtime.draining import until_connections_close
from exo_runtime.engine import EngineOptions
from exo_runtime.limits import Limits
from exo_runtime.metrics import RuntimeMetrics
from exo_runtime.runtime_state import RuntimeState
from exo_runtime.scheduler import Scheduler

log = logging.getLogger("exo_runtime")

TERMINATION_LOG = "/dev/termination-log"


@dataclass(frozen=True)
class ServeConfig:
    """Everything `exo-runtime serve` was asked for."""

    model_path: str
    engine: str = "auto"
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None
    options: EngineOptions = field(default_factory=EngineOptions)
    chat_template: str | None = None
    warmup_prompt: str = "Hello"
    warmup_max_tokens: int = 8
    max_queue: int = 64
    shutdown_timeout: float = 30.0
    require_verified: bool = False  # load only a file `exo-runtime fetch` verified
    limits: Limits = field(default_factory=Limits)
    api_key: str | None = None  # when set, /v1 requests need it as a bearer token
    # Consecutive failed engine steps after which /healthz answers 503 (the pod is restarted).
    max_failed_steps: int = 3

    @property
    def served_name(self) -> str:
        return self.model_name or Path(self.model_path).name.removesuffix(".gguf")


# -- loading -------------------------------------------------------------------------------


def load_and_warm_up(config: ServeConfig, runtime: RuntimeState, metrics: RuntimeMetrics) -> None:
    """Load the engine, pick the chat template and warm up; raise on any failure."""
    from exo_runtime.selector import load_engine

    def on_progress(done: int, total: int) -> None:
        runtime.load_progress = done / total if total else 0.0

    started = time.perf_counter()
    engine = load_engine(
        config.model_path,
        config.engine,
        config.options,
        on_progress,
        require_verified=config.require_verified,
    )
    runtime.engine = engine
    runtime.load_seconds = time.perf_counter() - started
    metrics.load_seconds.set(runtime.load_seconds)
    log.info("loaded %s with %s in %.2fs", config.model_path, engine.name, runtime.load_seconds)
    runtime.chat_template = choose_chat_template(
        override=config.chat_template,
        embedded=engine.embedded_chat_template(),
        architecture=engine.architecture(),
        special_tokens=engine.special_tokens(),
    )
    if runtime.chat_template is None:
        log.warning(
            "no chat template: the model carries none and architecture %r has no built-in one; "
            "/v1/chat/completions will refuse requests (give --chat-template)",
            engine.architecture(),
        )
    else:
        log.info("chat template: %s", runtime.chat_template.source)
    if not runtime.move_to("warming_up"):
        return
    started = time.perf_counter()
    engine.warmup(engine.tokenize(config.warmup_prompt, add_special=True), config.warmup_max_tokens)
    runtime.warmup_seconds = time.perf_counter() - started
    metrics.warmup_seconds.set(runtime.warmup_seconds)
    log.info("warmed up in %.2fs", runtime.warmup_seconds)


def report_ready(runtime: RuntimeState) -> None:
    """One JSON line on stdout with the step times, in the shape of `exo-runtime fetch`'s lines.

    The operator reads it from the pod's log once the pod is Ready (exo_operator.runtime_events).
    """
    event = {
        "event": "ready",
        "loadSeconds": round(runtime.load_seconds, 3),
        "warmupSeconds": round(runtime.warmup_seconds, 3),
        "engine": runtime.engine.name,
        "contextLength": runtime.engine.context_length,
    }
    devices = getattr(runtime.engine, "devices", ())
    if devices:  # a model split over RPC workers: the bytes of weights each device holds
        event["devices"] = [d.as_dict() for d in devices]
    print(json.dumps(event), flush=True)


def report_load_failure(reason: str) -> None:
    """One line on stderr, and the pod's termination message, for the operator to read."""
    line = f"exo-runtime: load failed: {reason}"
    print(line, file=sys.stderr, flush=True)
    try:
        with open(TERMINATION_LOG, "w", encoding="utf-8") as f:
            f.write(line + "\n")
    except OSError:
        pass  # not in a pod, or not writable: stderr already has it


# -- the app -------------------------------------------------------------------------------


class Runtime:
    """The process's pieces: config, state, metrics, and how to stop the HTTP server."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.state = RuntimeState()
        self.metrics = RuntimeMetrics()
        self.exit_code = 0
        self.request_exit: Callable[[], None] = lambda: None
        self.open_connections: Callable[[], int] = lambda: 0
        self.loop: asyncio.AbstractEventLoop | None = None

    def start_loading(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        threading.Thread(target=self._load, name="exo-loader", daemon=True).start()

    def _load(self) -> None:
        try:
            load_and_warm_up(self.config, self.state, self.metrics)
        except Exception as err:
            reason = str(err) or type(err).__name__
            self.state.error = reason
            self.state.move_to("failed")
            report_load_failure(reason)
            self.exit_code = 1
            self.loop.call_soon_threadsafe(self.request_exit)
            return
        engine = self.state.engine
        scheduler = Scheduler(
            engine,
            parallel=self.config.options.parallel,
            max_queue=self.config.max_queue,
            metrics=self.metrics,
            max_failed_steps=self.config.max_failed_steps,
        )
        scheduler.start(self.loop)
        self.state.scheduler = scheduler
        if self.state.warmup_seconds is not None:
            # Before /readyz turns 200: whoever sees the pod Ready finds the line in its log.
            report_ready(self.state)
        if self.state.move_to("ready"):
            log.info(
                "ready: serving %s on %s:%d",
                self.config.served_name,
                self.config.host,
                self.config.port,
            )

    async def drain(self) -> None:
        """Stop taking requests (/readyz 503), let in-flight ones finish within the bound, let
        the clients' connections close (draining.py), exit."""
        was_ready = self.state.ready
        self.state.move_to("draining")
        scheduler = self.state.scheduler
        if was_ready and scheduler is not None and scheduler.in_flight:
            log.info("draining %d in-flight requests", scheduler.in_flight)
            try:
                await asyncio.wait_for(scheduler.idle.wait(), self.config.shutdown_timeout)
            except TimeoutError:
                log.warning(
                    "%d requests still running after %.0fs: cancelling them",
                    scheduler.in_flight,
                    self.config.shutdown_timeout,
                )
                # Cancelled, their clients get a last event instead of a cut connection.
                scheduler.cancel_all()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(scheduler.idle.wait(), 2)
        await until_connections_close(self.open_connections)
        self.request_exit()


# -- the process ---------------------------------------------------------------------------


class _DrainingServer(uvicorn.Server):
    """uvicorn, but the first SIGTERM/SIGINT drains (readiness 503 first) instead of stopping."""

    def __init__(self, config: uvicorn.Config, runtime: Runtime) -> None:
        super().__init__(config)
        self._runtime = runtime
        self._drain_started = False

    def handle_exit(self, sig: int, frame: Any) -> None:
        # Not recording the signal keeps uvicorn from re-raising it after shutdown, so a
        # drained process exits 0.
        if self._drain_started:
            self.force_exit = True
            self.should_exit = True
            return
        self._drain_started = True
        loop = self._runtime.loop
        if loop is None:
            self.should_exit = True
            return
        loop.call_soon_threadsafe(lambda: loop.create_task(self._runtime.drain()))


def serve(config: ServeConfig) -> int:
    """Run the server until drained or the load fails; return the process exit code."""
    from exo_runtime.app import create_app

    runtime = Runtime(config)
    app = create_app(runtime)
    uv_config = uvicorn.Config(
        app,
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        lifespan="on",
    )
    server = _DrainingServer(uv_config, runtime)

    def request_exit() -> None:
        server.should_exit = True

    runtime.request_exit = request_exit
    runtime.open_connections = lambda: len(server.server_state.connections)
    log.info("listening on %s:%d; loading %s", config.host, config.port, config.model_path)
    server.run()
    return runtime.exit_code
