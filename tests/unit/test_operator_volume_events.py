"""Reading the volume Events of a pod stuck in ContainerCreating, and only of such a pod.

The Event list is a function handed in: here one that answers from a dict, standing in for the
apiserver's field-selected list, which the cluster tier serves for real.
"""

import asyncio
from datetime import UTC, datetime, timedelta

from exo_operator.volume_events import VolumeEvents, volume_finding

KEY = ("ml", "gemma")
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def stamp(seconds_ago):
    return (NOW - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name, creating=True, scheduled_ago=30):
    waiting = {"waiting": {"reason": "ContainerCreating"}} if creating else {"running": {}}
    return {
        "metadata": {"name": name, "uid": f"uid-{name}"},
        "status": {
            "phase": "Pending" if creating else "Running",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastTransitionTime": stamp(scheduled_ago),
                }
            ],
            "containerStatuses": [{"name": "runtime", "state": waiting}],
        },
    }


def event(reason, message, at):
    return {"type": "Warning", "reason": reason, "message": message, "lastTimestamp": at}


class Events:
    """Warning Events by pod name, and every list asked for."""

    def __init__(self, **events):
        self.events = events
        self.reads = []

    def __call__(self, namespace, pod, uid):
        self.reads.append(pod)
        return self.events.get(pod, [])


def run(events, *rounds, stuck_after=5.0):
    async def main():
        reconciled = []

        async def on_read(key):
            reconciled.append(key)

        reader = VolumeEvents(
            on_read, read_events=events, stuck_after=stuck_after, reread=0, now=lambda: NOW
        )
        results = []
        for pods in rounds:
            results.append(reader.problems(KEY, pods))
            while reader._reads:
                await asyncio.sleep(0.005)
        return results, reconciled

    return asyncio.run(asyncio.wait_for(main(), 10))


def test_the_latest_volume_warning_is_the_finding():
    found = volume_finding([
        event("FailedAttachVolume", "Multi-Attach error for volume pvc-1", stamp(20)),
        event("FailedMount", "MountVolume.SetUp failed: timed out", stamp(5)),
        event("BackOff", "Back-off pulling image", stamp(1)),
    ])  # fmt: skip
    assert (found.reason, found.message) == ("FailedMount", "MountVolume.SetUp failed: timed out")
    assert volume_finding([event("BackOff", "x", stamp(1))]) is None


def test_a_stuck_pod_is_read_and_its_model_reconciled_with_the_finding():
    events = Events(
        a=[event("FailedAttachVolume", "Multi-Attach error for volume pvc-1", stamp(3))]
    )
    (first, second), reconciled = run(events, [pod("a")], [pod("a")])
    assert first == {}  # the read runs in the background
    assert second["a"].reason == "FailedAttachVolume"
    assert "Multi-Attach" in second["a"].message
    assert events.reads[0] == "a" and reconciled[0] == KEY


def test_pods_that_run_or_just_got_their_node_cost_no_read():
    events = Events()

    async def main():
        async def on_read(key):
            pass

        reader = VolumeEvents(on_read, read_events=events, now=lambda: NOW)
        reader.problems(KEY, [pod("running", creating=False), pod("new", scheduled_ago=1)])
        await asyncio.sleep(0.05)  # the new pod's read waits for it to be stuck (5 s)
        pending = list(reader._reads)
        reader.forget(KEY)
        return pending

    pending = asyncio.run(main())
    assert events.reads == []
    assert pending == [(KEY, "new")]


def test_a_pod_that_started_drops_its_old_finding():
    events = Events(a=[event("FailedMount", "timed out", stamp(3))])
    (_, stuck, started), _ = run(events, [pod("a")], [pod("a")], [pod("a", creating=False)])
    assert "a" in stuck and started == {}
