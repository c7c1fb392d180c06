"""A model's Events are posted in the background, in order, each with the time it happened,
without waiting for the API threads that child applies queue on."""

import asyncio
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from exo_operator import kube
from exo_operator.event_posts import EventPoster
from exo_operator.status import Transition
from fixtures.kubeconfig import use_kubeconfig, write_kubeconfig

MODEL = {"metadata": {"name": "m", "namespace": "ns", "uid": "u"}}


class EventsApiserver(BaseHTTPRequestHandler):
    """Records each Event posted, a little slowly; refuses the ones whose reason is `Refused`."""

    protocol_version = "HTTP/1.1"
    posted: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        time.sleep(0.05)
        refused = event["reason"] == "Refused"
        if not refused:
            type(self).posted.append(event)
        body = json.dumps(
            {"kind": "Status", "code": 403, "message": "forbidden"} if refused else event
        ).encode()
        self.send_response(403 if refused else 201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def apiserver(tmp_path, monkeypatch):
    EventsApiserver.posted = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), EventsApiserver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, f"http://127.0.0.1:{server.server_address[1]}")
    use_kubeconfig(monkeypatch, path)
    kube.load_credentials(pool_size=4)
    yield
    server.shutdown()


def test_events_are_posted_in_order_while_every_api_thread_is_busy(apiserver):
    async def scenario() -> tuple[float, list[datetime]]:
        loop = asyncio.get_running_loop()
        # The API threads, all taken by child applies that wait on a slow apiserver.
        busy = threading.Event()
        api_threads = ThreadPoolExecutor(2)
        loop.set_default_executor(api_threads)
        for _ in range(2):
            loop.run_in_executor(None, busy.wait)
        poster = EventPoster()
        started = time.perf_counter()
        poster.post(
            MODEL, [Transition("Normal", "Loading", "one"), Transition("Normal", "Ready", "two")]
        )
        handed_over = time.perf_counter() - started
        times = [datetime.now().astimezone()]
        poster.post(
            MODEL, [Transition("Warning", "Refused", "three"), Transition("Normal", "Ok", "four")]
        )
        await asyncio.wait_for(poster.settled(), timeout=10)
        busy.set()
        api_threads.shutdown()
        return handed_over, times

    handed_over, (between,) = asyncio.run(scenario())
    assert handed_over < 0.01  # the reconcile does not wait for the apiserver's 50 ms a post
    # All posted, though the API threads never came free; the refused one skipped, not retried.
    reasons = [e["reason"] for e in EventsApiserver.posted]
    assert sorted(reasons) == ["Loading", "Ok", "Ready"]
    assert reasons.index("Loading") < reasons.index("Ready")  # one write's Events in order
    # Each carries the time of its status write, not of its (later) post, so that a listing by
    # time shows them in the order they happened.
    stamp = {
        e["reason"]: datetime.fromisoformat(e["firstTimestamp"]) for e in EventsApiserver.posted
    }
    assert stamp["Loading"] == stamp["Ready"] <= between <= stamp["Ok"]
    assert all(e["involvedObject"]["name"] == "m" for e in EventsApiserver.posted)
