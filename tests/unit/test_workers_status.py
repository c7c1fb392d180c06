"""The status of a model split across workers: members, READY n/m, and the group's reasons."""

import pytest
from _models import model
from exo_operator.cache import cache_key
from exo_operator.pod_problems import pod_problem
from exo_operator.status import Observed, aggregate, status_changed
from test_operator_status import HASH, NOW, claim

WORKERS = 2


def group_labels(group):
    return {"exo.dev/group": str(group)} if group else {}


def head(ready=True, name="gemma-abc12", node="kwok-gpu-0", group=0, **status):
    labels = {"exo.dev/template-hash": HASH, "exo.dev/component": "runtime"}
    return _pod(name, labels | group_labels(group), ready, node, **status)


def worker(ordinal, ready=True, node=None, group=0, **status):
    name = f"gemma{f'-g{group}' if group else ''}-workers-{ordinal}"
    labels = {"exo.dev/component": "worker"} | group_labels(group)
    return _pod(name, labels, ready, node or f"kwok-gpu-{ordinal + 1}", **status)


def _pod(name, labels, ready, node, **status):
    conditions = [{"type": "Ready", "status": "True" if ready else "False",
                   "lastTransitionTime": "2026-01-01T11:00:30Z"}]  # fmt: skip
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node},
        "status": {"conditions": conditions + status.pop("conditions", []), **status},
    }


def observed(heads, workers, previous_phase=None, ready_events=None, **spec):
    m = model(distributed={"workers": WORKERS}, **spec)
    key = cache_key(m.spec.source)
    previous = {"cacheKey": key} | ({"phase": previous_phase} if previous_phase else {})
    return Observed(
        model=m,
        previous=previous,
        template_hash=HASH,
        claim=claim(stamp=(key, "2026-01-01T11:01:00Z")),
        runtime_pods=heads,
        worker_pods=workers,
        ready_events=ready_events or {},
    )


def terminated(message):
    return [{"name": "runtime", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
             "lastState": {"terminated": {"exitCode": 1, "message": message}}}]  # fmt: skip


def test_the_head_and_every_worker_ready_is_ready_three_of_three_with_members():
    status, events = aggregate(observed([head()], [worker(0), worker(1)]), NOW)
    assert status["phase"] == "Ready"
    assert status["message"] == "1/1 replicas loaded across 2 workers and warmed up"
    assert status["readyText"] == "3/3"
    assert status["readyMembers"] == 3 and status["desiredMembers"] == 3
    assert status["members"] == [
        {"name": "gemma-abc12", "role": "head", "group": 0, "ready": True, "node": "kwok-gpu-0"},
        {"name": "gemma-workers-0", "role": "worker", "group": 0, "ready": True,
         "node": "kwok-gpu-1"},
        {"name": "gemma-workers-1", "role": "worker", "group": 0, "ready": True,
         "node": "kwok-gpu-2"},
    ]  # fmt: skip
    # The scale subresource still counts head pods.
    assert status["replicas"] == 1 and status["readyReplicas"] == 1
    assert [e.reason for e in events] == ["Ready"]


def test_each_member_shows_the_bytes_of_weights_its_head_placed_on_it():
    at = "gemma-workers-{}.gemma-workers.ml.svc:50052".format
    devices = [
        {"name": "RPC0", "bytes": 36_000_000, "endpoint": at(0)},
        {"name": "RPC1", "bytes": 199_000_000, "endpoint": at(1)},
        {"name": "CPU", "bytes": 170_000_000},
    ]
    events = {"gemma-abc12": {"event": "ready", "devices": devices}}
    status, _ = aggregate(observed([head()], [worker(0), worker(1)], ready_events=events), NOW)
    assert [m.get("bytes") for m in status["members"]] == [170_000_000, 36_000_000, 199_000_000]


def test_members_have_no_bytes_until_the_head_reports_them():
    status, _ = aggregate(observed([head()], [worker(0), worker(1)]), NOW)
    assert all("bytes" not in m for m in status["members"])


@pytest.mark.parametrize("previous", ["Ready", "Degraded"])
def test_a_worker_lost_from_a_ready_model_degrades_it_naming_the_pod(previous):
    # Deleted: its replacement not made yet, so it is missing, not merely not ready.
    status, events = aggregate(observed([head()], [worker(0)], previous_phase=previous), NOW)
    assert status["phase"] == "Degraded"
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "WorkerNotReady"
    assert "gemma-workers-1" in status["message"]
    assert status["readyText"] == "2/3"
    assert status["members"][2] == {
        "name": "gemma-workers-1", "role": "worker", "group": 0, "ready": False
    }  # fmt: skip
    if previous == "Ready":
        assert [(e.type, e.reason) for e in events] == [("Warning", "WorkerNotReady")]


def test_the_group_recovers_by_itself_once_the_worker_is_back():
    status, _ = aggregate(observed([head()], [worker(0), worker(1)], "Degraded"), NOW)
    assert status["phase"] == "Ready"


def test_workers_starting_behind_a_ready_head_is_loading_not_degraded():
    status, events = aggregate(observed([head()], [worker(0, ready=False)]), NOW)
    assert status["phase"] == "Loading"
    assert [(e.type, e.reason) for e in events] == [("Normal", "WaitingForWorkers")]


def test_an_unschedulable_worker_says_which_and_why():
    why = "0/5 nodes are available: 4 Insufficient nvidia.com/gpu."
    unschedulable = {"type": "PodScheduled", "status": "False", "message": why}
    status, _ = aggregate(
        observed(
            [head(ready=False)],
            [worker(0), worker(1, ready=False, conditions=[unschedulable])],
        ),
        NOW,
    )
    assert status["phase"] == "Pending"
    assert "worker pod gemma-workers-1" in status["message"]
    assert "Insufficient nvidia.com/gpu" in status["message"]


ADDRESS = "gemma-workers-1.gemma-workers.ml.svc:50052"


@pytest.mark.parametrize(
    ("line", "reason", "phase"),
    [
        # The head keeps retrying (a worker may yet come): waiting, with the worker named.
        (f"exo-runtime: load failed: rpc worker unreachable: {ADDRESS}", "WorkerUnreachable",
         "Pending"),
        # Head and worker from different builds never agree: no wait mends it.
        (f"exo-runtime: load failed: rpc worker version mismatch: {ADDRESS} speaks 2.0.0, "
         "the head 3.0.0", "WorkerVersionMismatch", "Failed"),
    ],
)  # fmt: skip
def test_the_heads_worker_failures_become_reasons_naming_the_worker(line, reason, phase):
    pod = head(ready=False, containerStatuses=terminated(f"loading\n{line}\n"))
    assert pod_problem(pod).reason == reason
    status, _ = aggregate(observed([pod], [worker(0), worker(1)]), NOW)
    assert status["phase"] == phase
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == reason
    assert ADDRESS in status["message"]


@pytest.mark.parametrize(("previous", "phase"), [("Ready", "Degraded"), (None, "Pending")])
def test_a_head_that_lost_a_worker_is_recovering_not_failed(previous, phase):
    # The head exited to load onto the worker again: restarted, it waits for it.
    line = f"exo-runtime: rpc worker lost: {ADDRESS} (it closed the connection); exiting"
    pod = head(ready=False, containerStatuses=terminated(line))
    status, _ = aggregate(observed([pod], [worker(0), worker(1, ready=False)], previous), NOW)
    assert status["phase"] == phase
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == "WorkerLost"
    assert ADDRESS in status["message"]


def test_other_load_failures_stay_load_failed():
    pod = head(ready=False, containerStatuses=terminated("exo-runtime: load failed: bad magic"))
    assert pod_problem(pod).reason == "LoadFailed"


def test_scaled_to_zero_wants_no_member():
    status, _ = aggregate(observed([], [], replicas=0), NOW)
    assert status["phase"] == "Pending"
    assert status["members"] == [] and status["desiredMembers"] == 0
    assert status["readyText"] == "0/0"


def test_a_model_no_longer_split_drops_its_members():
    previous = {"members": [{"name": "x", "role": "head", "ready": True}], "readyMembers": 1,
                "desiredMembers": 3}  # fmt: skip
    m = model()
    key = cache_key(m.spec.source)
    obs = Observed(
        model=m,
        previous={"cacheKey": key, **previous},
        template_hash=HASH,
        claim=claim(stamp=(key, "2026-01-01T11:01:00Z")),
        runtime_pods=[head()],
    )
    status, _ = aggregate(obs, NOW)
    assert status["members"] is None and status["readyMembers"] is None
    assert status["readyText"] == "1/1"
    assert status_changed(previous, status)
    # A model that never was split writes none of them.
    fresh, _ = aggregate(Observed(**{**obs.__dict__, "previous": {"cacheKey": key}}), NOW)
    assert "members" not in fresh


# Two groups (spec.replicas 2) of a head and two workers each.
def two_groups(*, lost=(), heads=None, previous_phase=None, ready_events=None):
    workers = [
        worker(i, group=g, node=f"node-{g}-{i}")
        for g in range(2)
        for i in range(WORKERS)
        if (g, i) not in lost
    ]
    heads = heads or [head(name="gemma-abc12"), head(name="gemma-g1-def34", group=1)]
    obs = observed(
        heads,
        workers,
        previous_phase,
        ready_events,
        replicas=2,
        storage={"accessMode": "ReadWriteMany"},
    )
    return aggregate(obs, NOW)


def test_two_whole_groups_are_ready_six_of_six_each_member_named_with_its_group():
    status, _ = two_groups()
    assert status["phase"] == "Ready"
    assert status["message"] == "2/2 replicas loaded across 2 workers each and warmed up"
    assert status["readyText"] == "6/6" and status["desiredMembers"] == 6
    assert [(m["name"], m["role"], m["group"]) for m in status["members"]] == [
        ("gemma-abc12", "head", 0),
        ("gemma-workers-0", "worker", 0),
        ("gemma-workers-1", "worker", 0),
        ("gemma-g1-def34", "head", 1),
        ("gemma-g1-workers-0", "worker", 1),
        ("gemma-g1-workers-1", "worker", 1),
    ]


@pytest.mark.parametrize("previous", ["Ready", None])
def test_a_lost_worker_degrades_only_its_group_while_the_other_serves(previous):
    # Degraded even on the way up: group 0 is whole and serves, as one ready replica of two does.
    status, events = two_groups(lost=[(1, 1)], previous_phase=previous)
    assert status["phase"] == "Degraded"
    assert status["message"] == "group 1: worker pod gemma-g1-workers-1 not ready"
    assert next(c for c in status["conditions"] if c["type"] == "Ready")["reason"] == (
        "WorkerNotReady"
    )
    assert next(c for c in status["conditions"] if c["type"] == "Available")["status"] == "True"
    assert status["readyText"] == "5/6"
    not_ready = [(m["name"], m["group"]) for m in status["members"] if not m["ready"]]
    assert not_ready == [("gemma-g1-workers-1", 1)]
    assert [e.reason for e in events] == ["WorkerNotReady"]


def test_workers_lost_in_both_groups_name_both():
    status, _ = two_groups(lost=[(0, 0), (1, 1)], previous_phase="Ready")
    assert status["phase"] == "Degraded"
    assert status["message"] == (
        "groups 0, 1: worker pod gemma-workers-0, gemma-g1-workers-1 not ready"
    )


def test_no_group_whole_on_the_way_up_is_loading():
    status, _ = two_groups(lost=[(0, 0), (1, 1)])
    assert status["phase"] == "Loading"


def test_a_group_without_its_head_leaves_the_model_degraded():
    status, _ = two_groups(heads=[head()], previous_phase="Ready")
    assert status["phase"] == "Degraded"
    assert status["message"] == "1/2 replicas ready"
    assert [m["group"] for m in status["members"] if m["role"] == "head"] == [0]


def test_the_head_of_a_group_scaled_away_counts_no_more_while_it_goes():
    # spec.replicas 2: group 2's Deployment is deleted, its pod not yet (same spec, same hash).
    leftover = head(name="gemma-g2-xyz99", group=2)
    heads = [head(name="gemma-abc12"), leftover]
    status, _ = two_groups(heads=heads, previous_phase="Ready")
    assert status["phase"] == "Degraded"
    assert status["readyReplicas"] == 1
    assert "gemma-g2-xyz99" not in [m["name"] for m in status["members"]]


def test_each_groups_members_show_the_bytes_their_own_head_placed():
    def ready_line(group, sizes):
        prefix = f"gemma-g{group}-workers" if group else "gemma-workers"
        at = f"{prefix}-{{}}.gemma-workers.ml.svc:50052".format
        devices = [{"name": f"RPC{i}", "bytes": b, "endpoint": at(i)} for i, b in enumerate(sizes)]
        return {"event": "ready", "devices": [*devices, {"name": "CPU", "bytes": 7}]}

    events = {"gemma-abc12": ready_line(0, [10, 20]), "gemma-g1-def34": ready_line(1, [30, 40])}
    status, _ = two_groups(ready_events=events)
    assert [m["bytes"] for m in status["members"]] == [7, 10, 20, 7, 30, 40]
