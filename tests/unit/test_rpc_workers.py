"""The head's side of llama.cpp RPC: worker addresses, the HELLO exchange, waiting for workers.

The workers here are small TCP servers on loopback that answer HELLO the way ggml's RPC server
does; they stand in for a server of another llama.cpp build (a version we cannot run for real)
and for workers that are slow to start. tests/runtime/test_rpc_split.py runs the real ones.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest
from exo_runtime.engine import ModelLoadError
from exo_runtime.rpc_workers import (
    PROTOCOL_VERSION,
    Endpoint,
    VersionMismatch,
    WorkerUnreachable,
    check_worker,
    compatible,
    hello,
    parse_endpoints,
    wait_for_workers,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("w0:50052", (Endpoint("w0", 50052),)),
        (
            "a.ns.svc:1, 10.0.0.2:50052",
            (Endpoint("a.ns.svc", 1), Endpoint("10.0.0.2", 50052)),
        ),
        ("", ()),
        ("a:1,,", (Endpoint("a", 1),)),
    ],
)
def test_worker_lists_parse_to_endpoints(text: str, expected: tuple[Endpoint, ...]) -> None:
    assert parse_endpoints(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("worker", "expected host:port"),
        (":50052", "expected host:port"),
        ("w:0", "expected host:port"),
        ("w:65536", "expected host:port"),
        ("w:port", "expected host:port"),
        ("::1:50052", "expected host:port"),
        ("a:1,a:1", "a:1 is named twice"),
    ],
)
def test_bad_worker_lists_are_refused_with_the_bad_part(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_endpoints(text)


@pytest.mark.parametrize(
    ("server", "client", "ok"),
    [
        ((7, 0, 0), (7, 0, 0), True),
        ((7, 0, 5), (7, 0, 0), True),
        ((7, 0, 0), (7, 1, 0), True),  # an older minor on the server is fine
        ((7, 1, 0), (7, 0, 0), False),  # a newer minor is not
        ((6, 0, 0), (7, 0, 0), False),
        ((8, 0, 0), (7, 0, 0), False),
    ],
)
def test_protocol_compatibility_follows_llama_cpp(
    server: tuple[int, int, int], client: tuple[int, int, int], ok: bool
) -> None:
    assert compatible(server, client) is ok


class _HelloServer:
    """A loopback server answering each HELLO with `version`, or hanging up, or staying silent."""

    def __init__(
        self, version: tuple[int, int, int] | None, silent: bool = False, port: int = 0
    ) -> None:
        self.version, self.silent = version, silent
        self.sock = socket.create_server(("127.0.0.1", port))
        self.endpoint = Endpoint("127.0.0.1", self.sock.getsockname()[1])
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = conn.recv(1 + 8 + 24)
                self.requests.append(request)
                if self.silent:
                    time.sleep(2)
                elif self.version is not None:
                    conn.sendall(struct.pack("<Q4B", 28, *self.version, 0) + bytes(24))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def hello_server() -> Iterator[type[_HelloServer]]:
    servers: list[_HelloServer] = []

    def start(*args: object, **kwargs: object) -> _HelloServer:
        server = _HelloServer(*args, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in servers:
        server.close()


def closed_port() -> Endpoint:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return Endpoint("127.0.0.1", s.getsockname()[1])


def test_hello_sends_llama_cpps_request_and_reads_the_version(hello_server) -> None:
    server = hello_server((7, 0, 3))
    assert hello(server.endpoint, timeout=2) == (7, 0, 3)
    # RPC_CMD_HELLO (14), the request's size (24, little-endian) and 24 zero capability bytes.
    assert server.requests == [bytes([14]) + (24).to_bytes(8, "little") + bytes(24)]


def test_a_worker_of_another_protocol_version_is_named(hello_server) -> None:
    server = hello_server((PROTOCOL_VERSION[0] - 1, 0, 0))
    with pytest.raises(VersionMismatch, match=f"rpc worker version mismatch: {server.endpoint}"):
        check_worker(server.endpoint, timeout=2)


def test_a_worker_that_hangs_up_on_hello_is_a_version_mismatch(hello_server) -> None:
    server = hello_server(None)
    with pytest.raises(VersionMismatch, match="hung up on HELLO"):
        check_worker(server.endpoint, timeout=2)


def test_a_silent_worker_is_unreachable_after_the_timeout(hello_server) -> None:
    server = hello_server((7, 0, 0), silent=True)
    with pytest.raises(WorkerUnreachable, match="did not answer HELLO"):
        hello(server.endpoint, timeout=0.2)


def test_waiting_ends_with_the_workers_that_never_answered(hello_server) -> None:
    up, down = hello_server(PROTOCOL_VERSION), closed_port()
    started = time.monotonic()
    with pytest.raises(ModelLoadError) as failure:
        wait_for_workers([up.endpoint, down], timeout=0.5, poll_interval=0.05)
    assert str(failure.value).startswith(f"rpc worker unreachable: {down} ")
    assert str(up.endpoint) not in str(failure.value)
    assert time.monotonic() - started < 3


def test_waiting_returns_once_a_late_worker_answers() -> None:
    endpoint = closed_port()
    late: list[_HelloServer] = []
    threading.Timer(
        0.3, lambda: late.append(_HelloServer(PROTOCOL_VERSION, port=endpoint.port))
    ).start()
    started = time.monotonic()
    try:
        wait_for_workers([endpoint], timeout=10, poll_interval=0.05)
    finally:
        time.sleep(0.05)
        for server in late:
            server.close()
    assert time.monotonic() - started >= 0.3, "returned before the worker started"


def test_a_version_mismatch_fails_at_once_without_waiting(hello_server) -> None:
    server = hello_server((PROTOCOL_VERSION[0] + 1, 0, 0))
    started = time.monotonic()
    with pytest.raises(VersionMismatch):
        wait_for_workers([server.endpoint], timeout=30, poll_interval=0.05)
    assert time.monotonic() - started < 5


def test_serve_takes_workers_from_the_flag_or_exo_rpc_workers(monkeypatch) -> None:
    from exo_runtime.cli import build_parser

    args = build_parser().parse_args(["serve", "--rpc-workers", "w0:50052, w1:50053"])
    assert (args.rpc_workers, args.rpc_connect_timeout) == (("w0:50052", "w1:50053"), 300.0)
    monkeypatch.setenv("EXO_RPC_WORKERS", "w2:1")
    monkeypatch.setenv("EXO_RPC_CONNECT_TIMEOUT", "5")
    args = build_parser().parse_args(["serve"])
    assert (args.rpc_workers, args.rpc_connect_timeout) == (("w2:1",), 5.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--rpc-workers", "w0"], "expected host:port"),
        (["serve", "--rpc-connect-timeout", "0"], "must be more than 0"),
        (["rpc-worker", "--port", "0"], "must be at least 1"),
    ],
)
def test_bad_rpc_flags_exit_2_naming_the_flag(argv: list[str], message: str, capsys) -> None:
    from exo_runtime.cli import build_parser

    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_a_worker_listens_on_loopback_and_port_50052_unless_told(monkeypatch) -> None:
    from exo_runtime.cli import build_parser

    args = build_parser().parse_args(["rpc-worker"])
    assert (args.host, args.port, args.threads) == ("127.0.0.1", 50052, None)
    monkeypatch.setenv("EXO_RPC_HOST", "0.0.0.0")
    monkeypatch.setenv("EXO_RPC_PORT", "6000")
    monkeypatch.setenv("EXO_RPC_THREADS", "3")
    args = build_parser().parse_args(["rpc-worker"])
    assert (args.host, args.port, args.threads) == ("0.0.0.0", 6000, 3)


def test_the_head_notices_a_worker_that_restarted_by_its_new_boot_id() -> None:
    # A real HTTP server on loopback stands in for the worker's /healthz (the runtime tier runs
    # the real worker); its boot id changes as a restarted worker's would.
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from exo_runtime.rpc_workers import Endpoint, watch_workers

    boot = ["first"]

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"boot": boot[0]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    with ThreadingHTTPServer(("127.0.0.1", 0), Health) as http:
        threading.Thread(target=http.serve_forever, daemon=True).start()
        endpoint = Endpoint("127.0.0.1", http.server_address[1] - 1)
        lost: list[tuple[Endpoint, str]] = []
        done = threading.Event()
        watch_workers(
            {endpoint: "first"}, lambda e, why: (lost.append((e, why)), done.set()), every=0.05
        )
        assert not done.wait(0.3)  # the same boot: nothing to say
        boot[0] = "second"
        assert done.wait(5)
        http.shutdown()
    assert lost == [(endpoint, "it restarted: the layers it held are gone")]
