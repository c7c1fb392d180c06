"""How the operator scales: N ExoModels on kwok GPU nodes (not a timed test).

Measures, with the operator running as its own process:
  - the delay from a model's last runtime pod turning Ready to the ExoModel turning Ready
    (both seen by this script's watches, so one clock), p50 and p99;
  - the operator's resident memory once every model is Ready;
  - apiserver requests per ExoModel (the apiserver's `apiserver_request_total`): the
    operator's own (server-side applies and ExoModel writes) and everyone's;
  - writes per minute while idle;
  - the operator's CPU seconds, its child watch events and reconciles per model, and the time of
    a reconcile (its own metrics);
  - with --unrelated-pods N, every run twice: alone, then beside N pods that are not the
    operator's (their own namespace, on kwok nodes of their own), to show what they cost it;
  - with --profile, a py-spy profile of the operator per run (collapsed stacks, which
    speedscope.app opens) and its top functions;
  - the anchor, before each run: the control plane alone given the same models and children
    (the operator's own manifests, each Deployment applied the moment its fetch Job completes
    and `phase: Ready` written the moment its pod turns Ready, by loops that do nothing else),
    whose apply -> first pod and pod Ready -> model Ready are the floor that this machine's
    kube-apiserver, controllers and kwok allow any operator (--without-anchor skips it).

The last line of output is a JSON list with one object per run.

Start a kwok cluster with room for the pods first, e.g.
  KWOK_NODES=64 KWOK_GPUS_PER_NODE=8 KWOK_CPU_NODES=5 scripts/kwok.sh up
then: .venv/bin/python bench/operator_scale.py --models 100 --models 500
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from math import nan
from pathlib import Path

import yaml
from exo_operator.model import ExoModel
from exo_operator.plan import desired_children
from exo_operator.settings import OperatorSettings
from kubernetes import client, config, watch

REPO = Path(__file__).resolve().parents[1]
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE"}
# What the operator applies; kwok's volume stage applies PersistentVolumes, which are not ours.
OPERATOR_APPLIED = {"deployments", "services", "jobs", "persistentvolumeclaims"}
METRIC = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>[0-9.e+]+)$")
SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>[0-9.e+-]+)$")
UNRELATED_NAMESPACE = "bench-unrelated"
# Nodes of their own for the unrelated pods: the model pods' nodes keep their 110-pod room.
UNRELATED_NODES = 20


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


def cpu_seconds(pid: int) -> float:
    """User plus system time of the process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def operator_metrics(port: int) -> dict[str, float]:
    """The operator's own samples, summed over their labels (child events over resources);
    a histogram's buckets keep their bound in the name (`..._bucket le=1.0`)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    samples: Counter = Counter()
    for line in text.splitlines():
        if m := SAMPLE.match(line):
            bound = re.search(r'le="([^"]+)"', m["labels"] or "")
            name = f"{m['name']} le={bound[1]}" if bound else m["name"]
            samples[name] += float(m["value"])
    return dict(samples)


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

    def pod_to_model_delays(self) -> list[float]:
        """Last pod Ready -> model Ready, per model that got both (hold the lock)."""
        return [
            max(0.0, self.model_ready_at[m] - self.last_pod_ready_at[m])
            for m in self.model_ready_at
            if m in self.last_pod_ready_at
        ]

    def slowest(self, started: float, count: int) -> list[tuple[float, float, str]]:
        """The `count` longest pod Ready -> model Ready delays, each with when (seconds after
        the apply) its pod turned Ready: whether the slow ones came during the apply storm."""
        ready = self.last_pod_ready_at
        pairs = [
            (self.model_ready_at[m] - ready[m], ready[m] - started, m)
            for m in self.model_ready_at
            if m in ready
        ]
        return sorted(pairs, reverse=True)[:count]

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
    if not values:
        return float("nan")  # no model got that far
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Operator:
    """`exo-operator run` as its own process; under `py-spy record` when profiled.

    py-spy starts the operator itself, so it may trace it without extra privileges.
    """

    def __init__(self, log_path: Path, profile_path: Path | None):
        exe = Path(sys.executable).parent / "exo-operator"
        env = {**os.environ, "EXO_RUNTIME_IMAGE": "exo-runtime:dev"}
        self.metrics_port = free_port()
        command = [str(exe), "run", "--all-namespaces", "--standalone", "--quiet",
                   "--metrics-port", str(self.metrics_port)]  # fmt: skip
        if profile_path:
            spy = Path(sys.executable).parent / "py-spy"
            command = [str(spy), "record", "--format", "raw", "--function", "--rate", "50",
                       "--nonblocking", "--output", str(profile_path), "--", *command]  # fmt: skip
        self.proc = subprocess.Popen(
            command, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT
        )
        time.sleep(3)
        if self.proc.poll() is not None:
            sys.exit(f"the operator exited at once; see {log_path}")
        self.pid = self.proc.pid
        if profile_path:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
            self.pid = int(children.split()[0])

    def stop(self) -> None:
        os.kill(self.pid, 15)  # py-spy writes its profile once the operator has exited
        self.proc.wait(timeout=60)


def model_doc(namespace: str, i: int) -> dict:
    return {
        "apiVersion": "exo.dev/v1alpha1",
        "kind": "ExoModel",
        "metadata": {"name": f"m{i}", "namespace": namespace},
        "spec": {"source": {"url": f"https://models.example/m{i}.gguf"}, "resources": {"gpus": 1}},
    }


def floor_once(n: int, timeout: float) -> dict[str, float]:
    """The anchor: apply -> first runtime pod, and pod Ready -> model Ready, for n models with
    no operator at all.

    The ExoModels, claims, Services and fetch Jobs go in at once; a watch applies each model's
    Deployment the moment its Job completes, and another writes `phase: Ready` into the model's
    status the moment its pod turns Ready: the operator's sequence without its reading and
    planning. Owner references are dropped (the garbage collector leaves the children alone)."""
    namespace = f"floor-{n}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    settings = OperatorSettings(runtime_image="exo-runtime:dev")
    first_stage, deployments = [], {}
    for i in range(n):
        body = model_doc(namespace, i)
        body["metadata"]["uid"] = str(uuid.uuid4())
        model = ExoModel.from_body(body)
        fetching = desired_children(model, settings, cached=False, model_bytes=None).manifests
        serving = desired_children(model, settings, cached=True, model_bytes=None).manifests
        for manifest in fetching + serving:
            manifest["metadata"].pop("ownerReferences", None)
        first_stage.append(fetching)
        deployments[model.name] = [m for m in serving if m["kind"] == "Deployment"]
    clock = ReadyClock(namespace)
    clock.start()
    apps = client.AppsV1Api()
    pool = ThreadPoolExecutor(8)
    applied: set[str] = set()

    def follow_jobs() -> None:
        for event in watch.Watch().stream(client.BatchV1Api().list_namespaced_job, namespace):
            job = event["object"]
            model = (job.metadata.labels or {}).get("exo.dev/model")
            done = any(
                c.type == "Complete" and c.status == "True" for c in job.status.conditions or []
            )
            if done and model in deployments and model not in applied:
                applied.add(model)
                for deployment in deployments[model]:
                    pool.submit(apps.create_namespaced_deployment, namespace, deployment)
            if clock.stop.is_set():
                return

    def report_ready() -> None:
        custom, reported = client.CustomObjectsApi(), set()
        for event in watch.Watch().stream(
            client.CoreV1Api().list_namespaced_pod,
            namespace,
            label_selector="exo.dev/component=runtime",
        ):
            pod = event["object"]
            model = (pod.metadata.labels or {}).get("exo.dev/model")
            ready = any(
                c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or [])
            )
            if ready and model not in reported:
                reported.add(model)
                pool.submit(
                    custom.patch_namespaced_custom_object_status, "exo.dev", "v1alpha1",
                    namespace, "exomodels", model, {"status": {"phase": "Ready"}},
                )  # fmt: skip
            if clock.stop.is_set():
                return

    threading.Thread(target=follow_jobs, daemon=True).start()
    threading.Thread(target=report_ready, daemon=True).start()
    time.sleep(1)
    started = time.monotonic()
    try:
        for chunk in range(0, n, 100):
            items = [model_doc(namespace, i) for i in range(chunk, min(n, chunk + 100))]
            items += [m for ms in first_stage[chunk : chunk + 100] for m in ms]
            kubectl("apply", "-f", "-", stdin=as_list(items))
        while len(clock.model_ready_at) < n and time.monotonic() - started < timeout:
            time.sleep(0.5)
        with clock.lock:
            to_pod = [at - started for at in clock.first_pod_at.values()]
            delays = clock.pod_to_model_delays()
        return {
            "floor: apply→first pod p50 (s)": percentile(to_pod, 0.50),
            "floor: apply→first pod p99 (s)": percentile(to_pod, 0.99),
            "floor: pod→model p50 (s)": percentile(delays, 0.50),
            "floor: pod→model p99 (s)": percentile(delays, 0.99),
        }
    finally:
        clock.stop.set()
        pool.shutdown(wait=True)
        kubectl("delete", "namespace", namespace, "--timeout=600s")


def run_once(
    n: int, unrelated: int, idle_seconds: float, timeout: float, log_dir: Path, profile: bool
) -> dict[str, float]:
    namespace = f"bench-{n}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    tag = f"{n}-models-{unrelated}-unrelated"
    profile_path = log_dir / f"operator-{tag}.profile.txt" if profile else None
    operator = Operator(log_dir / f"operator-{tag}.log", profile_path)
    try:
        clock = ReadyClock(namespace)
        clock.start()
        time.sleep(1)
        before = request_counts()
        started = time.monotonic()
        docs = [model_doc(namespace, i) for i in range(n)]
        for chunk in range(0, n, 100):
            kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(docs[chunk : chunk + 100]))
        while len(clock.model_ready_at) < n:
            if time.monotonic() - started > timeout:
                # The figures of the models that made it still say where the time goes.
                print(f"only {len(clock.model_ready_at)}/{n} models Ready after {timeout} s; "
                      "the figures below are theirs", file=sys.stderr)  # fmt: skip
                break
            time.sleep(0.5)
        all_ready = time.monotonic() - started
        time.sleep(2)
        after = request_counts()
        rss = rss_mib(operator.pid)
        cpu = cpu_seconds(operator.pid)
        own = operator_metrics(operator.metrics_port)
        with clock.lock:
            delays = clock.pod_to_model_delays()
            slowest = clock.slowest(started, 5)
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
        print(f"slowest pod Ready -> model Ready, {n} models (delay s, pod Ready at s after "
              "the apply, model): "
              + ", ".join(f"{d:.2f} @ {at:.0f} ({m})" for d, at, m in slowest),
              file=sys.stderr)  # fmt: skip
        print(f"idle writes by (verb, resource, subresource), {n} models:", file=sys.stderr)
        for count, key in busiest:
            print(f"  {count:8.0f}  {key}", file=sys.stderr)
        clock.stop.set()
        per_minute = 60.0 / idle_seconds
        reconciles = own.get("exo_operator_reconcile_seconds_count", 0.0)
        return {
            "models": n,
            "unrelated pods": unrelated,
            "models Ready": len(clock.model_ready_at),
            "all ready (s)": all_ready,
            "apply→first pod p50 (s)": percentile(to_pod, 0.50),
            "apply→first pod p99 (s)": percentile(to_pod, 0.99),
            "first pod→pod Ready p50 (s)": percentile(pod_to_ready, 0.50),
            "pod→model p50 (s)": percentile(delays, 0.50),
            "pod→model p99 (s)": percentile(delays, 0.99),
            "operator RSS (MiB)": rss,
            "operator CPU (s)": cpu,
            "child events/model": own.get("exo_operator_child_events_total", 0.0) / n,
            "reconciles/model": reconciles / n,
            "reconcile mean (ms)": 1000
            * own.get("exo_operator_reconcile_seconds_sum", 0.0)
            / max(reconciles, 1.0),
            "reconciles over 1 s (%)": 100
            * (reconciles - own.get("exo_operator_reconcile_seconds_bucket le=1.0", reconciles))
            / max(reconciles, 1.0),
            "operator requests/model": operator_requests(delta) / n,
            "all requests/model": sum(delta.values()) / n,
            "operator idle writes/min": writes(idle_delta, operator_only=True) * per_minute,
            "all idle writes/min": writes(idle_delta, operator_only=False) * per_minute,
        }
    finally:
        operator.stop()
        if profile_path:
            print_top_functions(profile_path)
        # Waiting keeps the next run's idle window free of this namespace's teardown.
        kubectl("delete", "namespace", namespace, "--timeout=600s")


def unrelated_node(i: int, pods: int) -> dict:
    """A kwok node for unrelated pods only; the taint keeps the scheduler's pods off it."""
    resources = {"cpu": "64", "memory": "256Gi", "pods": str(pods)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": f"kwok-unrelated-{i}",
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"type": "kwok", "exo.dev/bench-unrelated": "true"},
        },
        "spec": {"taints": [{"key": "exo.dev/bench-unrelated", "effect": "NoSchedule"}]},
        "status": {"allocatable": resources, "capacity": resources},
    }


def unrelated_pod(i: int) -> dict:
    """Someone else's pod: bound to a kwok node directly, with labels the operator must skip."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"other-{i}",
            "namespace": UNRELATED_NAMESPACE,
            "labels": {"app": "someone-else", "shard": str(i % 50)},
        },
        "spec": {
            "nodeName": f"kwok-unrelated-{i % UNRELATED_NODES}",
            "tolerations": [{"key": "exo.dev/bench-unrelated", "operator": "Exists"}],
            "containers": [{"name": "app", "image": "registry.example/app:1"}],
        },
    }


def create_unrelated_pods(count: int) -> None:
    """Creates `count` pods of nobody the operator knows, in Lists of 500 on 4 kubectls; the
    ones a kept earlier run left are reused."""
    started = time.monotonic()
    per_node = count // UNRELATED_NODES + 10
    nodes = [unrelated_node(i, per_node) for i in range(UNRELATED_NODES)]
    kubectl("apply", "-f", "-", stdin=as_list(nodes))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": UNRELATED_NAMESPACE}}
    kubectl("apply", "-f", "-", stdin=json.dumps(namespace))
    kubectl("wait", "--for=create", "serviceaccount/default", "-n", UNRELATED_NAMESPACE)
    core = client.CoreV1Api()
    existing = unrelated_pods_present()

    def create(start: int) -> None:
        items = [unrelated_pod(i) for i in range(start, min(start + 500, count))]
        kubectl("create", "-f", "-", stdin=as_list(items))

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(create, range(existing, count, 500)))
    created = time.monotonic() - started
    # kwok turns them Running: wait, so that the runs measure the operator, not that churn.
    while core.list_namespaced_pod(
        UNRELATED_NAMESPACE, field_selector="status.phase!=Running", limit=1
    ).items:
        time.sleep(2)
    print(
        f"{count - existing} unrelated pods created ({existing} kept) in {created:.0f} s, "
        f"all Running after {time.monotonic() - started:.0f} s",
        file=sys.stderr,
    )


def unrelated_pods_present() -> int:
    first = client.CoreV1Api().list_namespaced_pod(UNRELATED_NAMESPACE, limit=1)
    return len(first.items) + (first.metadata.remaining_item_count or 0)


def as_list(items: list[dict]) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def delete_unrelated_pods() -> None:
    kubectl("delete", "namespace", UNRELATED_NAMESPACE, "--wait=false", "--ignore-not-found")
    kubectl("delete", "nodes", "-l", "exo.dev/bench-unrelated=true", "--wait=false")


def print_top_functions(path: Path, top: int = 15) -> None:
    """The functions the operator spent its samples in, by own time and with callees."""
    own: Counter = Counter()
    inclusive: Counter = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        total += int(count)
        own[frames[-1]] += int(count)
        for frame in set(frames):
            inclusive[frame] += int(count)
    print(f"profile {path} ({total} samples, active threads only):", file=sys.stderr)
    for title, counts in (("own time", own), ("with callees", inclusive)):
        print(f"  top functions by {title}:", file=sys.stderr)
        for frame, n in counts.most_common(top):
            print(f"    {100 * n / max(total, 1):5.1f}%  {frame}", file=sys.stderr)


def summary(row: dict[str, float]) -> dict[str, float | None]:
    """One run as the JSON line reports it; a figure not measured (no anchor) is null, since
    NaN is not JSON and `jq` refuses it."""
    figures = {
        "models": row["models"],
        "unrelated_pods": row["unrelated pods"],
        "ready": row["models Ready"],
        "p50_s": round(row["pod→model p50 (s)"], 3),
        "p99_s": round(row["pod→model p99 (s)"], 3),
        "apply_to_pod_p50_s": round(row["apply→first pod p50 (s)"], 2),
        "apply_to_pod_p99_s": round(row["apply→first pod p99 (s)"], 2),
        "floor_apply_to_pod_p50_s": round(row.get("floor: apply→first pod p50 (s)", nan), 2),
        "floor_apply_to_pod_p99_s": round(row.get("floor: apply→first pod p99 (s)", nan), 2),
        "floor_p50_s": round(row.get("floor: pod→model p50 (s)", nan), 3),
        "floor_p99_s": round(row.get("floor: pod→model p99 (s)", nan), 3),
        "all_ready_s": round(row["all ready (s)"], 1),
        "rss_mib": round(row["operator RSS (MiB)"], 1),
        "cpu_s": round(row["operator CPU (s)"], 1),
        "idle_writes_per_min": round(row["operator idle writes/min"], 2),
    }
    return {key: None if value != value else value for key, value in figures.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", type=int, action="append", help="ExoModels per run (repeat)")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--log-dir", type=Path, default=Path("/tmp"))
    parser.add_argument(
        "--unrelated-pods",
        type=int,
        default=0,
        metavar="N",
        help="run each model count again beside N pods that are not the operator's",
    )
    parser.add_argument(
        "--keep-unrelated-pods",
        action="store_true",
        help="leave the unrelated pods for the next invocation (say, to compare two builds)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="record a py-spy profile of the operator per run"
    )
    parser.add_argument(
        "--without-anchor", action="store_true", help="skip the control plane's own floor"
    )
    args = parser.parse_args()
    if not os.environ.get("KUBECONFIG"):
        sys.exit("KUBECONFIG is not set: run scripts/kwok.sh up and export the line it prints")
    config.load_kube_config()
    kubectl("apply", "--server-side", "-f", str(REPO / "crds" / "exo.dev_exomodels.yaml"))
    kubectl("wait", "--for=condition=Established", "crd/exomodels.exo.dev", "--timeout=30s")
    counts = args.models or [100]

    def run(n: int, unrelated: int) -> dict[str, float]:
        floor = {} if args.without_anchor else floor_once(n, args.timeout)
        row = run_once(n, unrelated, args.idle_seconds, args.timeout, args.log_dir, args.profile)
        return row | floor

    rows = []
    if present := unrelated_pods_present():
        print(f"runs alone skipped: {present} unrelated pods are kept from before", file=sys.stderr)
    else:
        rows = [run(n, 0) for n in counts]
    if args.unrelated_pods:
        create_unrelated_pods(args.unrelated_pods)
        try:
            rows += [run(n, args.unrelated_pods) for n in counts]
        finally:
            if not args.keep_unrelated_pods:
                delete_unrelated_pods()
    keys = list(rows[0])
    width = max(len(k) for k in keys)
    print(f"{'':{width}}  " + "  ".join(f"{r['models']:>10}" for r in rows))
    for key in keys[1:]:
        print(f"{key:{width}}  " + "  ".join(f"{r[key]:>10.2f}" for r in rows))
    print(json.dumps([summary(r) for r in rows]))


if __name__ == "__main__":
    main()
