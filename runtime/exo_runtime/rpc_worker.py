"""`exo-runtime rpc-worker`: llama.cpp's RPC server in this process, over this node's device.

The server is the same llama.cpp build as the head's `exo-runtime serve` (one image), so the
protocol versions match by construction. It holds no model: the head sends the tensors of its
share over the connection.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType

from exo_runtime.rpc_workers import (
    HEALTH_PATH,
    Endpoint,
    WorkerUnreachable,
    health_port,
    hello,
)

log = logging.getLogger("exo_runtime.rpc_worker")

# How long the worker waits for its own server to answer HELLO before it calls the start
# failed (the server binds within milliseconds; the margin is for a loaded node).
LISTEN_TIMEOUT = 30.0


def _serve_health(endpoint: Endpoint, server: threading.Thread) -> ThreadingHTTPServer:
    """GET /healthz on the port after the RPC port: 200 with this process's boot id while the
    RPC server runs. The probes and the head ask here, never the RPC port, whose server takes
    one client at a time."""
    boot = uuid.uuid4().hex

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            alive = self.path == HEALTH_PATH and server.is_alive()
            body = json.dumps({"boot": boot}).encode() if alive else b"{}"
            self.send_response(200 if alive else 503 if self.path == HEALTH_PATH else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # a probe every few seconds is not news

    http = ThreadingHTTPServer((endpoint.host or "0.0.0.0", health_port(endpoint)), Health)
    threading.Thread(target=http.serve_forever, name="rpc-health", daemon=True).start()
    return http


def _own_address(endpoint: Endpoint) -> Endpoint:
    # A server on every interface answers on loopback.
    if endpoint.host in ("0.0.0.0", ""):
        return Endpoint("127.0.0.1", endpoint.port)
    return endpoint


def run_rpc_worker(endpoint: Endpoint, threads: int) -> int:
    """Serve until SIGTERM/SIGINT (exit 0); exit 1 if the server cannot start."""
    from exo_runtime import ggml_backends, rpc

    devices = rpc.serving_devices()
    if not devices:
        print("exo-runtime rpc-worker: llama.cpp found no device to serve", file=sys.stderr)
        return 1
    names = [ggml_backends.device_name(d) for d in devices]
    # The server's C loop never returns to Python, so it runs on a daemon thread and the main
    # thread stays free to take signals.
    server = threading.Thread(
        target=rpc.run_server, args=(endpoint, devices, threads), name="rpc-server", daemon=True
    )
    server.start()
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    version = _wait_listening(_own_address(endpoint), server)
    if version is None:
        print(
            f"exo-runtime rpc-worker: the RPC server did not start on {endpoint} (port taken, or "
            "address not on this node: see llama.cpp's line above)",
            file=sys.stderr,
            flush=True,
        )
        return 1
    try:
        _serve_health(endpoint, server)
    except OSError as err:
        print(
            f"exo-runtime rpc-worker: cannot serve {HEALTH_PATH} on port {health_port(endpoint)}: "
            f"{err.strerror or err}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    variant = ggml_backends.cpu_variant()
    log.info(
        "rpc worker listening on %s: RPC protocol %s, devices %s, cpu backend %s, %d threads; "
        "health on port %d",
        endpoint,
        ".".join(map(str, version)),
        ", ".join(names),
        variant or "built-in",
        threads,
        health_port(endpoint),
    )
    while not stop.wait(0.5):
        if not server.is_alive():
            print("exo-runtime rpc-worker: the RPC server stopped", file=sys.stderr, flush=True)
            return 1
    # The server's thread cannot be stopped: leave without running llama.cpp's static
    # destructors under it (they unload the very backend it runs on).
    logging.shutdown()
    sys.stdout.flush()
    os._exit(0)


def _wait_listening(address: Endpoint, server: threading.Thread) -> tuple[int, int, int] | None:
    deadline = time.monotonic() + LISTEN_TIMEOUT
    while time.monotonic() < deadline and server.is_alive():
        try:
            return hello(address, timeout=2.0)
        except WorkerUnreachable:
            time.sleep(0.05)
    return None
