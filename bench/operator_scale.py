"""How the operator scales: N ExoModels on kwok GPU nodes (not a timed test).

Measures, with the operator running as its own process:
  - the delay from a model's last runtime pod turning Ready to the ExoModel turning Ready
    (both seen by this script's watches, so one clock), p50 and p99;
  - the operator's resident memory once every model is Ready;
  - apiserver requests per ExoModel (the apiserver's `apiserver_request_total`): the
    operator's own (server-side applies and ExoModel writes) and everyone's;
  - writes per minute while idle.

Start a kwok cluster with room for the pods first, e.g.
  KWOK_NODES=64 KWOK_GPUS_PER_NODE=8 KWOK_CPU_NODES=5 scripts/kwok.sh up
then: .venv/bin/python bench/operator_scale.py --models 100 --models 500
"""

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import yaml
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
# What the operator applies; kwok's volume stage applies PersistentVolumes, which are not ours.
OPERATOR_APPLIED = {"deployments", "services", "jobs", "persistentvolumeclaims"}
METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")


def kubectl(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run(["kubectl", *args], input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"kubectl {' '.join(args[:3])} failed: {proc.stderr.strip()}")
    return proc.stdout


def request_counts() -> Counter:
    """apiserver_request_total by (verb, resource, subresource), summed over the other labels."""
    counts: Counter = Counter()
    for line in kubectl("get", "--raw", "/metrics").splitlines():
        m = METRIC.match(line)
        if not m:
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m["labels"]))
        key = (labels.get("verb"), labels.get("resource"), labels.get("subresource", ""))
        counts[key] += float(m["value"])
    return counts


def _operators(verb: str, resource: str, sub: str) -> bool:
    """Writes only the operator makes: server-side applies of its children, ExoModel status."""
    return (verb == "APPLY" and resource in OPERATOR_APPLIED) or (
        resource == "exomodels" and sub == "status"
    )


def operator_requests(delta: Counter) -> float:
    """Requests only the operator makes: server-side applies, ExoModel status writes, log reads."""
    return sum(
        n
        for (verb, resource, sub), n in delta.items()
        if _operators(verb, resource, sub) or sub == "log"
    )


def writes(delta: Counter, operator_only: bool) -> float:
    total = 0.0
    for (verb, resource, sub), n in delta.items():
        if verb not in WRITE_VERBS:
            continue
        if operator_only and not _operators(verb, resource, sub):
            continue
        total += n
    return total


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class ReadyClock:
    """Watches runtime pods and ExoModels in one namespace and notes when each turned Ready."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self.pod_ready: dict[str, set[str]] = {}
        self.first_pod_at: dict[str, float] = {}
        self.last_pod_ready_at: dict[str, float] = {}
        self.model_ready_at: dict[str, float] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()

    def start(self) -> None:
        for target in (self._pods, self._models):
            threading.Thread(target=target, daemon=True).start()

    def _pods(self) -> None:
        core = client.CoreV1Api()
        for event in watch.Watch().stream(
            core.list_namespaced_pod, self.namespace, label_selector="exo.dev/component=runtime"
        ):
            pod = event["object"]
            model = (pod.metadata.labels or {}).get("exo.dev/model")
            ready = any(
                c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or [])
            )
            with self.lock:
                self.first_pod_at.setdefault(model, time.monotonic())
                seen = self.pod_ready.setdefault(model, set())
                if ready and pod.metadata.name not in seen:
                    seen.add(pod.metadata.name)
                    self.last_pod_ready_at[model] = time.monotonic()
            if self.stop.is_set():
                return

    def _models(self) -> None:
        api = client.CustomObjectsApi()
        for event in watch.Watch().stream(
            api.list_namespaced_custom_object, "exo.dev", "v1alpha1", self.namespace, "exomodels"
        ):
            obj = event["object"]
            name = obj["metadata"]["name"]
            if (obj.get("status") or {}).get("phase") == "Ready":
                with self.lock:
                    self.model_ready_at.setdefault(name, time.monotonic())
            if self.stop.is_set():
                return


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_operator(log_path: Path) -> subprocess.Popen:
    exe = Path(sys.executable).parent / "exo-operator"
    env = {**os.environ, "EXO_RUNTIME_IMAGE": "exo-runtime:dev"}
    proc = subprocess.Popen(
        [str(exe), "run", "--all-namespaces", "--standalone", "--quiet"],
        env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    time.sleep(3)
    if proc.poll() is not None:
        sys.exit(f"the operator exited at once; see {log_path}")
    return proc


def run_once(n: int, idle_seconds: float, timeout: float, log_dir: Path) -> dict[str, float]:
    namespace = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    operator = start_operator(log_dir / f"operator-{n}.log")
    try:
        clock = ReadyClock(namespace)
        clock.start()
        time.sleep(1)
        before = request_counts()
        started = time.monotonic()
        docs = [
            {
                "apiVersion": "exo.dev/v1alpha1",
                "kind": "ExoModel",
                "metadata": {"name": f"m{i}", "namespace": namespace},
                "spec": {
                    "source": {"url": f"https://models.example/m{i}.gguf"},
                    "resources": {"gpus": 1},
                },
            }
            for i in range(n)
        ]
        for chunk in range(0, n, 100):
            kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs[chunk : chunk + 100]))
        while len(clock.model_ready_at) < n:
            if time.monotonic() - started > timeout:
                sys.exit(f"only {len(clock.model_ready_at)}/{n} models Ready after {timeout} s")
            time.sleep(0.5)
        all_ready = time.monotonic() - started
        time.sleep(2)
        after = request_counts()
        rss = rss_mib(operator.pid)
        with clock.lock:
            delays = [
                max(0.0, clock.model_ready_at[m] - clock.last_pod_ready_at[m])
                for m in clock.model_ready_at
                if m in clock.last_pod_ready_at
            ]
            to_pod = [clock.first_pod_at[m] - started for m in clock.first_pod_at]
            pod_to_ready = [
                clock.last_pod_ready_at[m] - clock.first_pod_at[m] for m in clock.last_pod_ready_at
            ]
        delta = after - before
        idle_before = request_counts()
        time.sleep(idle_seconds)
        idle_delta = request_counts() - idle_before
        busiest = sorted(
            ((n, key) for key, n in idle_delta.items() if key[0] in WRITE_VERBS), reverse=True
        )[:8]
        print(f"idle writes by (verb, resource, subresource), {n} models:", file=sys.stderr)
        for count, key in busiest:
            print(f"  {count:8.0f}  {key}", file=sys.stderr)
        clock.stop.set()
        per_minute = 60.0 / idle_seconds
        return {
            "models": n,
            "all ready (s)": all_ready,
            "apply→first pod p50 (s)": percentile(to_pod, 0.50),
            "apply→first pod p99 (s)": percentile(to_pod, 0.99),
            "first pod→pod Ready p50 (s)": percentile(pod_to_ready, 0.50),
            "pod→model p50 (s)": percentile(delays, 0.50),
            "pod→model p99 (s)": percentile(delays, 0.99),
            "operator RSS (MiB)": rss,
            "operator requests/model": operator_requests(delta) / n,
            "all requests/model": sum(delta.values()) / n,
            "operator idle writes/min": writes(idle_delta, operator_only=True) * per_minute,
            "all idle writes/min": writes(idle_delta, operator_only=False) * per_minute,
        }
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        # Waiting keeps the next run's idle window free of this namespace's teardown.
        kubectl("delete", "namespace", namespace, "--timeout=600s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, action="append", help="ExoModels per run (repeat)")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        sys.exit("KUBECONFIG is not set: run scripts/kwok.sh up and export the line it prints")
    config.load_kube_config()
    kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "exo.dev_exomodels.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/exomodels.exo.dev", "--timeout=30s")
    rows = [
        run_once(n, args.idle_seconds, args.timeout, args.log_dir) for n in args.models or [100]
    ]
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    print(f"{'':{width}}  " + "  ".join(f"{r['models']:>10}" for r in rows))
    for key in keys[1:]:
        print(f"{key:{width}}  " + "  ".join(f"{r[key]:>10.2f}" for r in rows))


if __name__ == "__main__":
    main()
