"""The head's view of its llama.cpp RPC workers: their addresses, HELLO, waiting for them.

llama.cpp aborts the whole process when it cannot reach a server or the server speaks another
protocol version, so before registering a worker (exo_runtime.rpc) the head says HELLO to it
here, in Python, and turns either fault into a reason that names the worker. Nothing here
loads llama.cpp: the CLI parses worker lists with it in images without the engine.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exo_runtime.engine import ModelLoadError

DEFAULT_RPC_PORT = 50052
# RPC_PROTO_{MAJOR,MINOR,PATCH}_VERSION in ggml-rpc.h of the llama.cpp that llama-cpp-python
# 0.3.36 vendors (a unit test holds it to the header the wheel ships). A server answers HELLO
# with its version; llama.cpp's client accepts the same major and a minor no newer than its own.
PROTOCOL_VERSION = (7, 0, 0)

# The HELLO exchange (ggml-rpc.cpp): the command byte, the request's size (u64) and the
# request (the client's 24 bytes of transport capabilities, zero for plain TCP); the answer is
# its size (u64) then major, minor, patch, a pad byte and the server's 24 capability bytes.
_RPC_CMD_HELLO = 14
_CONN_CAPS_SIZE = 24
_HELLO_REQUEST = struct.pack("<BQ", _RPC_CMD_HELLO, _CONN_CAPS_SIZE) + bytes(_CONN_CAPS_SIZE)
_HELLO_ANSWER_SIZE = 4 + _CONN_CAPS_SIZE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Endpoint:
    """A worker's address; llama.cpp splits it at the first colon, so no IPv6 literals."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def parse_endpoint(text: str) -> Endpoint:
    host, sep, port = text.strip().partition(":")
    if not sep or not host or ":" in port or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected host:port such as worker-0:{DEFAULT_RPC_PORT}, got {text!r}")
    return Endpoint(host, int(port))


def parse_endpoints(text: str) -> tuple[Endpoint, ...]:
    """ "a:50052,b:50052" as endpoints; empty text is no workers."""
    endpoints = tuple(parse_endpoint(part) for part in text.split(",") if part.strip())
    duplicated = sorted({str(e) for e in endpoints if endpoints.count(e) > 1})
    if duplicated:
        raise ValueError(f"each worker once: {', '.join(duplicated)} is named twice")
    return endpoints


class WorkerUnreachable(ConnectionError):
    """Nothing answered HELLO at the endpoint (refused, no route, or silent)."""


class VersionMismatch(ModelLoadError):
    """The worker speaks an RPC protocol this build's client refuses."""


def compatible(server: tuple[int, int, int], client: tuple[int, int, int]) -> bool:
    """llama.cpp's rule (negotiate_hello): same major, server minor not newer."""
    return server[0] == client[0] and server[1] <= client[1]


def hello(endpoint: Endpoint, timeout: float) -> tuple[int, int, int]:
    """Say HELLO to the worker and return the protocol version it answers with.

    A server serves one client at a time: one busy with another head accepts the connection
    but stays silent, which ends here as WorkerUnreachable after `timeout`.
    """
    try:
        sock = socket.create_connection((endpoint.host, endpoint.port), timeout=timeout)
    except OSError as err:
        raise WorkerUnreachable(f"{endpoint}: {err.strerror or err}") from err
    with sock:
        try:
            sock.settimeout(timeout)
            sock.sendall(_HELLO_REQUEST)
            answer = _receive(sock, 8 + _HELLO_ANSWER_SIZE)
        except TimeoutError as err:
            raise WorkerUnreachable(
                f"{endpoint}: accepted the connection but did not answer HELLO within "
                f"{timeout:g}s (busy serving another head?)"
            ) from err
        except OSError as err:
            # A server of another protocol version hangs up on a HELLO of the wrong size.
            raise VersionMismatch(
                f"rpc worker version mismatch: {endpoint} hung up on HELLO "
                f"({err.strerror or err}): it runs another llama.cpp build; use the head's image"
            ) from err
    (size,) = struct.unpack_from("<Q", answer)
    if size != _HELLO_ANSWER_SIZE:
        raise VersionMismatch(
            f"rpc worker version mismatch: {endpoint} answered HELLO with {size} bytes, not "
            f"{_HELLO_ANSWER_SIZE}: it runs another llama.cpp build; use the head's image"
        )
    major, minor, patch = answer[8:11]
    return (major, minor, patch)


def _receive(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        block = sock.recv(size - len(data))
        if not block:
            raise ConnectionResetError(f"closed after {len(data)} of {size} bytes")
        data += block
    return data


def check_worker(endpoint: Endpoint, timeout: float) -> None:
    """Raise WorkerUnreachable or VersionMismatch unless the worker can serve this head."""
    version = hello(endpoint, timeout)
    if not compatible(version, PROTOCOL_VERSION):
        theirs, ours = ".".join(map(str, version)), ".".join(map(str, PROTOCOL_VERSION))
        raise VersionMismatch(
            f"rpc worker version mismatch: {endpoint} speaks RPC protocol {theirs}, this head "
            f"{ours}: run the workers from the head's image"
        )


def wait_for_workers(
    endpoints: Sequence[Endpoint],
    timeout: float,
    *,
    poll_interval: float = 1.0,
    report_every: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Return once every worker has answered HELLO; a version mismatch fails at once, a worker
    still silent after `timeout` seconds fails with its address."""
    started = clock()
    missing = list(endpoints)
    last_report = started
    while True:
        for endpoint in list(missing):
            try:
                check_worker(endpoint, timeout=min(5.0, max(timeout, 0.1)))
            except WorkerUnreachable:
                continue
            missing.remove(endpoint)
            log.info("rpc worker %s answers", endpoint)
        if not missing:
            return
        now = clock()
        if now - started >= timeout:
            names = ", ".join(str(e) for e in missing)
            raise ModelLoadError(
                f"rpc worker unreachable: {names} (no answer within {timeout:g}s; check that "
                "the worker runs `exo-runtime rpc-worker` and the port is open)"
            )
        if now - last_report >= report_every:
            last_report = now
            log.info(
                "waiting for rpc workers: %s still missing (%.0fs of %gs)",
                ", ".join(str(e) for e in missing),
                now - started,
                timeout,
            )
        sleep(poll_interval)


# A worker answers GET /healthz on the port after its RPC port with its boot id. The RPC server
# accepts one client at a time and its accept queue is tiny: a TCP probe of the RPC port times
# out while a head is connected, and a connection left waiting there takes the queue's room.
HEALTH_PATH = "/healthz"


def health_port(endpoint: Endpoint) -> int:
    return endpoint.port + 1


def boot_id(endpoint: Endpoint, timeout: float = 2.0) -> str:
    """The worker process's boot id (new at every start); OSError when it does not answer."""
    conn = http.client.HTTPConnection(endpoint.host, health_port(endpoint), timeout=timeout)
    try:
        conn.request("GET", HEALTH_PATH)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 200:
        raise OSError(f"{HEALTH_PATH} answered {response.status}")
    try:
        return str(json.loads(body)["boot"])
    except (ValueError, KeyError, TypeError) as err:
        raise OSError(f"{HEALTH_PATH} answered {body[:80]!r}") from err


def lost_worker_line(endpoint: Endpoint, why: str) -> str:
    """What a head prints (and the operator reads) when it exits for a worker gone away."""
    return (
        f"exo-runtime: rpc worker lost: {endpoint} ({why}); exiting so that the pod restarts "
        "and loads the model onto it again"
    )


def watch_workers(
    boots: dict[Endpoint, str],
    on_lost: Callable[[Endpoint, str], None],
    *,
    every: float = 2.0,
    misses: int = 3,
) -> threading.Thread:
    """Call `on_lost(endpoint, why)`, from a thread of its own, once a worker the head loaded
    onto restarted (a new boot id: the layers it held are gone) or stopped answering `misses`
    times in a row. `boots` holds each worker's boot id from before the load."""

    def watch() -> None:
        missed = dict.fromkeys(boots, 0)
        while True:
            time.sleep(every)
            for endpoint, boot in boots.items():
                try:
                    now = boot_id(endpoint, timeout=every)
                except OSError as err:
                    missed[endpoint] += 1
                    if missed[endpoint] >= misses:
                        on_lost(endpoint, f"no answer {misses} times in a row: {err}")
                        return
                    continue
                missed[endpoint] = 0
                if now != boot:
                    on_lost(endpoint, "it restarted: the layers it held are gone")
                    return

    thread = threading.Thread(target=watch, name="rpc-watch", daemon=True)
    thread.start()
    return thread
