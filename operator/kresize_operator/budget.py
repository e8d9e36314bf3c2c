"""The operator's pod budget: how many resizer pods may exist at once, over all ResizeJobs.

Pure functions over plain dicts as the Kubernetes API returns them (camelCase JSON, e.g. a LIST response's items or
`ApiClient.sanitize_for_serialization`); the caller reads the objects, this module only decides. The budget is the
smallest of the sources that are known:

- the configured maximum (KRESIZE_MAX_PODS), always;
- the headroom the namespace's ResourceQuotas leave (`quota_headroom`): pods beyond it would be refused at creation,
  and the Job controller would retry them with back-off;
- optionally, the cluster's free capacity (`node_free_pods`): pods beyond it would only wait Pending;
- a cap that shrinks the budget while our pods stay Pending unschedulable (computed by the caller, passed in), for
  what the capacity estimate cannot see (affinity, volume topology, autoscaler delay).

Every count includes the resizer pods that exist already ("ours"): the budget is a total, not an increment.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from kubernetes.utils import parse_quantity

_FINISHED = frozenset({"Succeeded", "Failed"})
_BLOCKING_TAINTS = frozenset({"NoSchedule", "NoExecute"})  # resizer pods carry no tolerations
_SCHEDULED = ("cpu", "memory")  # the resources the capacity estimate accounts for
# ResourceQuota resource name -> where a pod's amount comes from: None is one per pod, else (requests|limits, name).
# A bare cpu/memory quota means requests.cpu/requests.memory (Kubernetes treats them alike).
_QUOTA_RESOURCES: dict[str, tuple[str, str] | None] = {
    "pods": None, "count/pods": None,
    "cpu": ("requests", "cpu"), "requests.cpu": ("requests", "cpu"), "limits.cpu": ("limits", "cpu"),
    "memory": ("requests", "memory"), "requests.memory": ("requests", "memory"), "limits.memory": ("limits", "memory"),
}


@dataclass(frozen=True)
class PodSize:
    """One resizer pod's resources, as the Job's container sets them."""

    requests: dict[str, str]  # e.g. {"cpu": "500m", "memory": "512Mi"}
    limits: dict[str, str]  # e.g. {"cpu": "1", "memory": "1Gi"}

    def amount(self, kind: str, resource: str) -> Decimal:
        """The pod's request or limit (`kind`) of `resource`; 0 when not set."""
        return _q((self.requests if kind == "requests" else self.limits).get(resource))


def _q(value: Any) -> Decimal:
    return Decimal(0) if value is None else Decimal(parse_quantity(value))


def quota_headroom(quotas: list[dict], size: PodSize, ours: int) -> int | None:
    """How many resizer pods the namespace's ResourceQuotas allow in total, counting the `ours` resizer pods that
    already exist (their usage is in status.used). None when no quota constrains pods, cpu or memory.

    Per quota and constrained resource: ours + floor((hard - used) / per-pod amount); the minimum of all. A quota
    already over its limit can give less than `ours` (never below 0): the budget then shrinks as our pods finish.
    """
    allowed: list[int] = []
    for quota in quotas:
        status = quota.get("status") or {}
        hard = status.get("hard") or (quota.get("spec") or {}).get("hard") or {}
        used = status.get("used") or {}
        for resource, limit in hard.items():
            if resource not in _QUOTA_RESOURCES:
                continue  # other resources (storage, services, extended) are not what a resizer pod uses
            source = _QUOTA_RESOURCES[resource]
            per_pod = Decimal(1) if source is None else size.amount(*source)
            if per_pod <= 0:
                continue  # the pod does not set it, so it does not count against this quota
            free = _q(limit) - _q(used.get(resource))
            allowed.append(ours + math.floor(free / per_pod))
    return max(0, min(allowed)) if allowed else None


def pod_requests(pod: Mapping[str, Any]) -> dict[str, Decimal]:
    """A pod's effective cpu/memory requests as the scheduler computes them: the containers' sum (plus sidecars,
    i.e. init containers with restartPolicy Always), or the peak of the init phase if higher; plus spec.overhead."""
    spec = pod.get("spec") or {}

    def requests(container: Mapping[str, Any]) -> dict[str, Decimal]:
        declared = (container.get("resources") or {}).get("requests") or {}
        return {r: _q(declared.get(r)) for r in _SCHEDULED}

    sidecars = dict.fromkeys(_SCHEDULED, Decimal(0))
    init_peak = dict.fromkeys(_SCHEDULED, Decimal(0))
    for container in spec.get("initContainers") or []:
        req = requests(container)
        if container.get("restartPolicy") == "Always":  # a sidecar keeps running beside everything after it
            sidecars = {r: sidecars[r] + req[r] for r in _SCHEDULED}
            step = sidecars
        else:  # an ordinary init container runs alone, beside the sidecars started before it
            step = {r: req[r] + sidecars[r] for r in _SCHEDULED}
        init_peak = {r: max(init_peak[r], step[r]) for r in _SCHEDULED}
    main = dict(sidecars)
    for container in spec.get("containers") or []:
        req = requests(container)
        main = {r: main[r] + req[r] for r in _SCHEDULED}
    overhead = spec.get("overhead") or {}
    return {r: max(main[r], init_peak[r]) + _q(overhead.get(r)) for r in _SCHEDULED}


def schedulable(node: Mapping[str, Any]) -> bool:
    """Whether a resizer pod (no tolerations, no node selector) can be placed on the node at all."""
    spec, status = node.get("spec") or {}, node.get("status") or {}
    if spec.get("unschedulable"):  # cordoned
        return False
    if not any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []):
        return False
    return not any(t.get("effect") in _BLOCKING_TAINTS for t in spec.get("taints") or [])


def node_free_pods(nodes: list[dict], pods: list[dict], size: PodSize, is_ours: Callable[[dict], bool]) -> int:
    """Resizer pods the schedulable nodes could hold in total, our existing pods included: per node,
    allocatable minus the requests of the other (not ours, not finished) pods bound to it, divided by one resizer
    pod's requests, and capped by allocatable `pods` minus the count of those other pods. Raises ValueError if the
    PodSize requests neither cpu nor memory (the estimate would be unbounded)."""
    per_pod = {r: size.amount("requests", r) for r in _SCHEDULED}
    if all(v <= 0 for v in per_pod.values()):
        raise ValueError("the resizer pod requests neither cpu nor memory; cluster capacity cannot bound it")
    others: dict[str, list[dict]] = {}
    for pod in pods:
        node_name = (pod.get("spec") or {}).get("nodeName")
        # Our pods are counted in the budget itself; finished pods hold no resources; unbound pods none yet.
        if node_name and not is_ours(pod) and (pod.get("status") or {}).get("phase") not in _FINISHED:
            others.setdefault(node_name, []).append(pod)
    return sum(_node_room(node, others.get((node.get("metadata") or {}).get("name", ""), []), per_pod)
               for node in nodes if schedulable(node))


def _node_room(node: Mapping[str, Any], others: Iterable[Mapping[str, Any]], per_pod: dict[str, Decimal]) -> int:
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    others = list(others)
    used = dict.fromkeys(_SCHEDULED, Decimal(0))
    for pod in others:
        req = pod_requests(pod)
        used = {r: used[r] + req[r] for r in _SCHEDULED}
    caps = [math.floor((_q(allocatable.get(r)) - used[r]) / per_pod[r]) for r in _SCHEDULED if per_pod[r] > 0]
    if "pods" in allocatable:  # the kubelet's max pods per node
        caps.append(int(_q(allocatable["pods"])) - len(others))
    return max(0, min(caps))


def pod_budget(max_pods: int, *, quota: int | None = None, cluster: int | None = None,
               unschedulable_cap: int | None = None) -> int:
    """The smallest of the configured maximum and the sources that are known (None: not known or not enabled);
    never negative."""
    return max(0, min([max_pods, *(s for s in (quota, cluster, unschedulable_cap) if s is not None)]))
