"""status.members of a model split across RPC workers: each group's head and workers, whether
each is ready, on which node, and how many bytes of weights it holds."""

from dataclasses import dataclass
from itertools import product
from typing import Any

from exo_operator.model import ExoModel
from exo_operator.naming import RPC_PORT, group_of, worker_address, worker_pod_name
from exo_operator.pod_problems import Finding, is_terminating, pod_is_ready, pod_problem


def _name(obj: dict[str, Any]) -> str:
    return (obj.get("metadata") or {}).get("name", "")


@dataclass(frozen=True)
class WorkerGroup:
    """The RPC workers a distributed model should have (every group's), as observed."""

    # status.members entries of the workers, one per expected worker, by group then ordinal.
    members: list[dict[str, Any]]
    # The expected workers that are missing or not ready, by pod name.
    not_ready: list[str]
    # Why some of them do not run, each message naming its pod.
    problems: list[Finding]
    # The groups with a worker in not_ready, in order.
    broken: tuple[int, ...] = ()


def worker_group(
    model: ExoModel, worker_pods: list[dict[str, Any]], volume_problems: dict[str, Finding]
) -> WorkerGroup:
    """Each expected worker (`<model>-workers-<i>`, then `<model>-g<g>-workers-<i>` for each
    further group) and its state.

    A worker is expected by name: one deleted and not yet made again counts as not ready.
    """
    spec = model.spec
    workers = spec.distributed.workers if spec.distributed else 0
    live = {_name(p): p for p in worker_pods if not is_terminating(p)}
    members, not_ready, problems, broken = [], [], [], []
    for group, ordinal in product(range(spec.replicas if workers else 0), range(workers)):
        name = worker_pod_name(model, ordinal, group)
        pod = live.get(name)
        ready = bool(pod and pod_is_ready(pod))
        members.append(_member(name, "worker", group, ready, pod))
        if ready:
            continue
        not_ready.append(name)
        if group not in broken:
            broken.append(group)
        problem = pod and pod_problem(pod, volume_problems.get(name))
        if problem:
            problems.append(Finding(problem.reason, f"worker pod {name}: {problem.message}"))
    return WorkerGroup(members, not_ready, problems, tuple(broken))


def _member(
    name: str, role: str, group: int, ready: bool, pod: dict[str, Any] | None
) -> dict[str, Any]:
    member: dict[str, Any] = {"name": name, "role": role, "group": group, "ready": ready}
    node = ((pod or {}).get("spec") or {}).get("nodeName")
    if node:
        member["node"] = node
    return member


def _add_member_bytes(
    model: ExoModel, members: list[dict[str, Any]], ready_events: dict[str, dict[str, Any]]
) -> None:
    """Each group's members' bytes of weights, from what that group's head placed."""
    for group in sorted({m["group"] for m in members}):
        of_group = [m for m in members if m["group"] == group]
        heads = [ready_events.get(m["name"]) for m in of_group if m["role"] == "head"]
        _add_group_bytes(model, group, of_group, heads)


def _add_group_bytes(
    model: ExoModel,
    group: int,
    members: list[dict[str, Any]],
    head_events: list[dict[str, Any] | None],
) -> None:
    """Each member's bytes of weights, from the devices its head's ready line lists: a worker
    by its RPC endpoint, the head by everything else (its CPU and GPUs)."""
    devices = next((e["devices"] for e in head_events if e and e.get("devices")), None)
    if not isinstance(devices, list):
        return
    by_endpoint: dict[str, int] = {}
    on_head = 0
    for device in devices:
        size = device.get("bytes") if isinstance(device, dict) else None
        if not isinstance(size, int):
            continue
        if device.get("endpoint"):
            by_endpoint[device["endpoint"]] = by_endpoint.get(device["endpoint"], 0) + size
        else:
            on_head += size
    workers = [m for m in members if m["role"] == "worker"]
    for i, member in enumerate(workers):
        address = worker_address(model, i, RPC_PORT, group)
        if address in by_endpoint:
            member["bytes"] = by_endpoint[address]
    for member in members:
        if member["role"] == "head":
            member["bytes"] = on_head


def worker_not_ready(model: ExoModel, group: WorkerGroup) -> str:
    names = ", ".join(group.not_ready)
    why = f"; {group.problems[0].message}" if group.problems else ""
    if model.spec.replicas > 1:
        # Only these groups stop serving: the message says which, the others keep serving.
        groups = ", ".join(map(str, group.broken))
        label = "groups" if len(group.broken) > 1 else "group"
        return f"{label} {groups}: worker pod {names} not ready{why}"
    return f"worker pod {names} not ready{why}"


def member_status(
    model: ExoModel,
    prev: dict[str, Any],
    heads: list[dict[str, Any]],
    group: WorkerGroup,
    ready_events: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """status.members, readyMembers and desiredMembers of a distributed model, with readyText
    counting members; for any other model, None for each that a former spec left (a merge
    patch removes them)."""
    if not model.spec.distributed:
        keys = ("members", "readyMembers", "desiredMembers")
        return {k: None for k in keys if prev.get(k) is not None}
    ordered = sorted(heads, key=_name)
    members = [_member(_name(p), "head", group_of(p), pod_is_ready(p), p) for p in ordered]
    members += [dict(m) for m in group.members]
    members.sort(key=lambda m: m["group"])  # stable: each group's head, then its workers
    _add_member_bytes(model, members, ready_events)
    ready = sum(1 for m in members if m["ready"])
    wanted = model.spec.replicas * (1 + model.spec.distributed.workers)
    return {
        "members": members,
        "readyMembers": ready,
        "desiredMembers": wanted,
        "readyText": f"{ready}/{wanted}",
    }
