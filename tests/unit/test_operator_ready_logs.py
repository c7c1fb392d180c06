"""Reading each Ready runtime pod's ready line once, in the background.

The log reader is a function handed in: here one that answers from a dict, standing in for the
kubelet, whose refusals (kwok has none to give logs) the cluster tier meets for real.
"""

import asyncio

from exo_operator import ready_logs
from exo_operator.ready_logs import ReadyLogs

KEY = ("ml", "gemma")
READY = '{"event": "ready", "loadSeconds": 3.2, "warmupSeconds": 0.5, "engine": "llamacpp"}'


def runtime_pod(name, ready=True):
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return {"metadata": {"name": name}, "status": {"conditions": [condition]}}


class Logs:
    """Pod logs by name (None: the log cannot be read), and every read asked for."""

    def __init__(self, **logs):
        self.logs = logs
        self.reads = []

    def __call__(self, namespace, pod, lines):
        self.reads.append((namespace, pod, lines))
        return self.logs.get(pod)


def run(logs, *rounds):
    """Calls events() once per round of pods, letting the reads finish between rounds."""

    async def main():
        found = []

        async def on_found(key):
            found.append(key)

        readers = ReadyLogs(on_found, read_log=logs)
        results = []
        for pods in rounds:
            results.append(readers.events(KEY, pods))
            while readers._reads:  # the reads this round started, and their reconciles
                await asyncio.sleep(0.005)
        return results, found

    return asyncio.run(asyncio.wait_for(main(), 10))


def test_a_ready_pods_line_is_read_once_and_its_model_reconciled():
    logs = Logs(a="INFO loading\n" + READY + "\nINFO ready\n")
    pods = [runtime_pod("a")]
    (first, second, third), found = run(logs, pods, pods, pods)
    assert first == {}  # the read runs in the background: the first reconcile is not held up
    assert second["a"]["loadSeconds"] == 3.2 and third == second
    assert found == [KEY]
    assert logs.reads == [("ml", "a", ready_logs.TAIL_LINES)]


def test_pods_not_ready_are_not_read():
    logs = Logs(a=READY)
    (result,), found = run(logs, [runtime_pod("a", ready=False)])
    assert result == {} and found == [] and logs.reads == []


def test_a_log_that_cannot_be_read_is_not_asked_for_again():
    logs = Logs()
    pods = [runtime_pod("a")]
    results, found = run(logs, pods, pods)
    assert results == [{}, {}] and found == [] and len(logs.reads) == 1


def test_a_log_without_the_line_is_read_once():
    logs = Logs(a="INFO loading\n")
    pods = [runtime_pod("a")]
    results, found = run(logs, pods, pods)
    assert results == [{}, {}] and found == [] and len(logs.reads) == 1


def test_a_pod_gone_is_forgotten_and_its_successor_read():
    logs = Logs(a=READY, b=READY)
    results, _ = run(logs, [runtime_pod("a")], [runtime_pod("b")], [runtime_pod("b")])
    assert [pod for _, pod, _ in logs.reads] == ["a", "b"]
    assert list(results[1]) == [] and list(results[2]) == ["b"]
