"""The operator's pod budget (operator/budget.py): ResourceQuota headroom, cluster free capacity and the final
minimum. Worked examples computed by hand, and properties proved on random clusters (hypothesis)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kresize_operator.budget import PodSize, node_free_pods, pod_budget, pod_requests, quota_headroom, schedulable

# One resizer pod: the operator's defaults.
SIZE = PodSize(requests={"cpu": "500m", "memory": "512Mi"}, limits={"cpu": "1", "memory": "1Gi"})
OURS_LABEL = {"app.kubernetes.io/name": "kresize-resizer"}


def is_ours(pod: dict) -> bool:
    return (pod.get("metadata") or {}).get("labels") == OURS_LABEL


def quota(hard: dict[str, str], used: dict[str, str] | None = None, *, in_spec_only: bool = False) -> dict:
    """A ResourceQuota as the API returns it; `in_spec_only`: not yet reconciled (no status)."""
    if in_spec_only:
        return {"kind": "ResourceQuota", "metadata": {"name": "q"}, "spec": {"hard": hard}}
    status: dict[str, Any] = {"hard": hard}
    if used is not None:
        status["used"] = used
    return {"kind": "ResourceQuota", "metadata": {"name": "q"}, "spec": {"hard": hard}, "status": status}


def node(name: str = "n1", cpu: str = "4", memory: str = "8Gi", pods: str | None = "110", *, ready: str = "True",
         unschedulable: bool = False, taints: tuple[str, ...] = ()) -> dict:
    allocatable = {"cpu": cpu, "memory": memory, "ephemeral-storage": "100Gi"}
    if pods is not None:
        allocatable["pods"] = pods
    spec: dict[str, Any] = {"taints": [{"key": f"k{i}", "effect": e} for i, e in enumerate(taints)]}
    if unschedulable:
        spec["unschedulable"] = True
    conditions = [{"type": "MemoryPressure", "status": "False"}, {"type": "Ready", "status": ready}]
    return {"metadata": {"name": name}, "spec": spec, "status": {"allocatable": allocatable, "conditions": conditions}}


def container(cpu: str | None = None, memory: str | None = None, **extra: Any) -> dict:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    return {"name": "c", "resources": {"requests": requests} if requests else {}, **extra}


def pod(node_name: str | None = "n1", cpu: str | None = None, memory: str | None = None, *, phase: str = "Running",
        ours: bool = False, init: list[dict] | None = None, containers: list[dict] | None = None) -> dict:
    spec: dict[str, Any] = {"containers": containers if containers is not None else [container(cpu, memory)]}
    if node_name is not None:
        spec["nodeName"] = node_name
    if init is not None:
        spec["initContainers"] = init
    return {"metadata": {"labels": OURS_LABEL if ours else {"app": "web"}}, "spec": spec, "status": {"phase": phase}}


# --- quota_headroom --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("hard", "used", "ours", "expected"),
    [
        ({"requests.cpu": "4"}, {"requests.cpu": "2500m"}, 2, 5),  # 2 + floor(1.5 / 0.5)
        ({"cpu": "4"}, {"cpu": "2.5"}, 2, 5),  # bare cpu is requests.cpu
        ({"requests.memory": "4Gi"}, {"requests.memory": "1Gi"}, 2, 8),  # 2 + floor(3Gi / 512Mi)
        ({"memory": "2Gi"}, {"memory": "1536Mi"}, 0, 1),  # 512Mi free: exactly one
        ({"requests.memory": "2Gi"}, {"requests.memory": "1537Mi"}, 0, 0),  # 1Mi short of one
        ({"limits.cpu": "10"}, {"limits.cpu": "3"}, 3, 10),  # 3 + floor(7 / 1)
        ({"limits.memory": "8Gi"}, {"limits.memory": "2Gi"}, 2, 8),  # 2 + floor(6Gi / 1Gi)
        ({"pods": "10"}, {"pods": "4"}, 1, 7),  # 1 + 6 free slots
        ({"count/pods": "10"}, {"count/pods": "4"}, 1, 7),
        ({"pods": "10"}, {}, 0, 10),  # used missing: nothing used
        ({"requests.cpu": "1"}, {"requests.cpu": "0"}, 0, 2),
        ({"requests.cpu": "4", "pods": "6"}, {"requests.cpu": "1", "pods": "2"}, 2, 6),  # pods: 2 + 4; cpu: 2 + 6
        ({"requests.cpu": "4", "limits.cpu": "4"}, {"requests.cpu": "1", "limits.cpu": "2"}, 2, 4),  # limits bind
    ],
)
def test_quota_worked_examples(hard, used, ours, expected):
    assert quota_headroom([quota(hard, used)], SIZE, ours) == expected


def test_quota_rounds_down():
    size = PodSize(requests={"cpu": "300m"}, limits={})
    assert quota_headroom([quota({"requests.cpu": "1"}, {"requests.cpu": "0"})], size, 0) == 3  # 1 / 0.3 = 3.33


def test_quota_takes_the_minimum_over_quotas():
    quotas = [quota({"pods": "20"}, {"pods": "2"}), quota({"requests.cpu": "2"}, {"requests.cpu": "1"})]
    assert quota_headroom(quotas, SIZE, 2) == 4  # pods: 2 + 18 = 20; cpu: 2 + floor(1 / 0.5) = 4


def test_quota_over_its_limit_goes_below_ours_but_not_below_zero():
    # Someone else used more than the quota allows (e.g. the quota was lowered after the fact).
    assert quota_headroom([quota({"requests.cpu": "2"}, {"requests.cpu": "2500m"})], SIZE, 3) == 2  # 3 + floor(-1)
    assert quota_headroom([quota({"pods": "5"}, {"pods": "7"})], SIZE, 2) == 0  # 2 - 2
    assert quota_headroom([quota({"requests.cpu": "1"}, {"requests.cpu": "3"})], SIZE, 0) == 0  # 0 - 4, clamped


def test_quota_none_when_nothing_constrains_pods():
    assert quota_headroom([], SIZE, 3) is None
    storage_only = quota({"requests.storage": "100Gi", "services": "5", "requests.nvidia.com/gpu": "2"}, {})
    assert quota_headroom([storage_only], SIZE, 3) is None
    # A resource the pod does not set does not count against the quota.
    no_limits = PodSize(requests={"cpu": "500m", "memory": "512Mi"}, limits={})
    assert quota_headroom([quota({"limits.cpu": "1"}, {"limits.cpu": "1"})], no_limits, 0) is None
    no_memory = PodSize(requests={"cpu": "500m"}, limits={})
    assert quota_headroom([quota({"requests.memory": "1Gi", "pods": "9"}, {"pods": "1"})], no_memory, 0) == 8


def test_quota_status_hard_preferred_spec_hard_as_fallback():
    assert quota_headroom([quota({"pods": "3"}, in_spec_only=True)], SIZE, 0) == 3  # not yet reconciled
    both = {"spec": {"hard": {"pods": "10"}}, "status": {"hard": {"pods": "3"}, "used": {"pods": "1"}}}
    assert quota_headroom([both], SIZE, 1) == 3  # 1 + (3 - 1), from status


@settings(max_examples=300, deadline=None)
@given(hard=st.integers(0, 50), used=st.integers(0, 60), ours=st.integers(0, 20))
def test_quota_pods_only_is_ours_plus_free_slots(hard, used, ours):
    assert quota_headroom([quota({"pods": str(hard)}, {"pods": str(used)})], SIZE, ours) == max(0, ours + hard - used)


@settings(max_examples=300, deadline=None)
@given(hard_m=st.integers(0, 8000), used_m=st.integers(0, 8000), more_m=st.integers(0, 4000), ours=st.integers(0, 8),
       other_pods=st.integers(0, 30))
def test_quota_more_usage_or_another_quota_never_raises_headroom(hard_m, used_m, more_m, ours, other_pods):
    base = [quota({"requests.cpu": f"{hard_m}m"}, {"requests.cpu": f"{used_m}m"})]
    before = quota_headroom(base, SIZE, ours)
    assert before is not None and before >= 0
    assert quota_headroom([quota({"requests.cpu": f"{hard_m}m"}, {"requests.cpu": f"{used_m + more_m}m"})],
                          SIZE, ours) <= before
    extra = quota({"pods": str(other_pods)}, {"pods": "0"})
    assert quota_headroom([*base, extra], SIZE, ours) <= before


# --- pod_requests ----------------------------------------------------------------------------------------------


def test_pod_requests_sum_containers_and_init_max_per_resource():
    p = pod(containers=[container("1", "1Gi"), container("1", "3Gi")], init=[container("3"), container("500m", "1Gi")])
    req = pod_requests(p)
    assert req["cpu"] == 3  # the init container's 3 beats the containers' 1 + 1
    assert req["memory"] == 4 * 2**30  # the containers' 1Gi + 3Gi beats the init's 1Gi


def test_pod_requests_sidecars_and_overhead():
    sidecar = container("250m", "256Mi", restartPolicy="Always")
    p = pod(containers=[container("1", "1Gi")], init=[sidecar, container("2", "128Mi")])
    p["spec"]["overhead"] = {"cpu": "100m", "memory": "64Mi"}
    req = pod_requests(p)
    # cpu: init phase peak 2 + 0.25 (sidecar beside it) beats 1 + 0.25; memory: 1Gi + 256Mi beats 128Mi + 256Mi.
    assert req["cpu"] == Decimal("2.35")
    assert req["memory"] == 2**30 + 256 * 2**20 + 64 * 2**20


def test_pod_requests_none_declared_is_zero():
    assert pod_requests(pod(containers=[{"name": "c"}])) == {"cpu": 0, "memory": 0}


# --- node_free_pods --------------------------------------------------------------------------------------------


def test_empty_node_fits_by_its_tightest_resource():
    assert node_free_pods([node(cpu="4", memory="8Gi")], [], SIZE, is_ours) == 8  # cpu 8, memory 16
    assert node_free_pods([node(cpu="3800m", memory="15Gi")], [], SIZE, is_ours) == 7  # floor(3.8 / 0.5)
    # As the kubelet reports memory: 8167148Ki / 512Mi = 15.58; cpu 32.
    assert node_free_pods([node(cpu="16", memory="8167148Ki")], [], SIZE, is_ours) == 15


def test_other_pods_requests_are_subtracted():
    pods = [pod("n1", "1500m", "1Gi")]
    assert node_free_pods([node(cpu="4", memory="8Gi")], pods, SIZE, is_ours) == 5  # cpu 2.5 -> 5; memory 14


def test_node_whose_other_pods_use_all_memory_gives_zero():
    assert node_free_pods([node(cpu="64", memory="8Gi")], [pod("n1", "1", "8Gi")], SIZE, is_ours) == 0
    overcommitted = [pod("n1", "1", "6Gi"), pod("n1", "1", "6Gi")]
    assert node_free_pods([node(cpu="64", memory="8Gi")], overcommitted, SIZE, is_ours) == 0  # never negative


def test_init_container_max_rule_on_a_node():
    heavy_init = pod("n1", containers=[container("1"), container("1")], init=[container("3")])
    assert node_free_pods([node(cpu="4", memory="64Gi")], [heavy_init], SIZE, is_ours) == 2  # 4 - 3 = 1 cpu
    light_init = pod("n1", containers=[container("1"), container("1")], init=[container("1")])
    assert node_free_pods([node(cpu="4", memory="64Gi")], [light_init], SIZE, is_ours) == 4  # 4 - 2 = 2 cpu


def test_finished_unbound_elsewhere_and_our_pods_are_ignored():
    pods = [
        pod("n1", "4", "8Gi", phase="Succeeded"),
        pod("n1", "4", "8Gi", phase="Failed"),
        pod(None, "4", "8Gi", phase="Pending"),  # not bound yet: holds nothing
        pod("n2", "4", "8Gi"),  # on a node not in the list
        pod("n1", "500m", "512Mi", ours=True),  # ours: counted in the budget itself
        pod("n1", "500m", "512Mi", ours=True, phase="Pending"),
    ]
    assert node_free_pods([node(cpu="4", memory="8Gi")], pods, SIZE, is_ours) == 8


@pytest.mark.parametrize(
    "excluded",
    [
        node("bad", unschedulable=True),  # cordoned
        node("bad", ready="False"),
        node("bad", ready="Unknown"),
        node("bad", taints=("NoSchedule",)),
        node("bad", taints=("PreferNoSchedule", "NoExecute")),
        {"metadata": {"name": "bad"}, "spec": {}, "status": {"allocatable": {"cpu": "4", "memory": "8Gi"}}},
    ],
    ids=["cordoned", "not-ready", "ready-unknown", "noschedule", "noexecute", "no-conditions"],
)
def test_unschedulable_nodes_are_excluded(excluded):
    assert not schedulable(excluded)
    assert node_free_pods([node("n1", cpu="2"), excluded], [], SIZE, is_ours) == 4


def test_prefer_no_schedule_taint_does_not_exclude():
    assert node_free_pods([node(taints=("PreferNoSchedule",))], [], SIZE, is_ours) == 8


def test_sum_over_nodes():
    nodes = [node("a", cpu="2", memory="64Gi"), node("b", cpu="8", memory="1Gi"), node("c", cpu="1")]
    pods = [pod("a", "1", "1Gi"), pod("c", "250m")]
    assert node_free_pods(nodes, pods, SIZE, is_ours) == 2 + 2 + 1  # a: cpu 1 -> 2; b: memory 2; c: cpu 0.75 -> 1


def test_allocatable_pods_caps_a_node():
    pods = [pod("n1"), pod("n1"), pod("n1", ours=True), pod("n1", phase="Succeeded")]
    assert node_free_pods([node(pods="3")], pods, SIZE, is_ours) == 1  # 3 slots - 2 running others
    assert node_free_pods([node(pods="2")], pods, SIZE, is_ours) == 0
    assert node_free_pods([node(pods=None)], pods, SIZE, is_ours) == 8  # not reported: cpu and memory decide


def test_only_requested_resources_constrain():
    cpu_only = PodSize(requests={"cpu": "1"}, limits={"memory": "1Gi"})
    assert node_free_pods([node(cpu="4", memory="1Mi")], [], cpu_only, is_ours) == 4
    memory_only = PodSize(requests={"memory": "1Gi"}, limits={})
    assert node_free_pods([node(cpu="100m", memory="3Gi")], [], memory_only, is_ours) == 3


def test_no_requests_at_all_is_an_error():
    with pytest.raises(ValueError, match="neither cpu nor memory"):
        node_free_pods([node()], [], PodSize(requests={}, limits={"cpu": "1"}), is_ours)
    with pytest.raises(ValueError):
        node_free_pods([], [], PodSize(requests={"cpu": "0"}, limits={}), is_ours)


def test_no_nodes_no_room():
    assert node_free_pods([], [pod("n1", "1")], SIZE, is_ours) == 0


NAMES = ("n0", "n1", "n2", "n3")
nodes_st = st.builds(
    node, name=st.sampled_from(NAMES), cpu=st.integers(0, 8000).map(lambda m: f"{m}m"),
    memory=st.integers(0, 16 * 1024).map(lambda mi: f"{mi}Mi"), pods=st.one_of(st.none(), st.integers(0, 12).map(str)),
    ready=st.sampled_from(["True", "True", "False"]), unschedulable=st.booleans(),
    taints=st.lists(st.sampled_from(["NoSchedule", "PreferNoSchedule"]), max_size=1).map(tuple))
pods_st = st.builds(
    pod, node_name=st.one_of(st.none(), st.sampled_from(NAMES)), cpu=st.integers(0, 3000).map(lambda m: f"{m}m"),
    memory=st.integers(0, 4096).map(lambda mi: f"{mi}Mi"), phase=st.sampled_from(["Running", "Pending", "Succeeded"]),
    ours=st.booleans())
sizes_st = st.builds(
    PodSize, requests=st.fixed_dictionaries({}, optional={"cpu": st.integers(1, 2000).map(lambda m: f"{m}m"),
                                                          "memory": st.integers(1, 2048).map(lambda mi: f"{mi}Mi")}
                                            ).filter(bool), limits=st.just({}))


@settings(max_examples=200, deadline=None)
@given(nodes=st.lists(nodes_st, max_size=4, unique_by=lambda n: n["metadata"]["name"]),
       pods=st.lists(pods_st, max_size=10), size=sizes_st, extra=pods_st)
def test_adding_a_pod_never_increases_room(nodes, pods, size, extra):
    before = node_free_pods(nodes, pods, size, is_ours)
    assert before >= 0
    after = node_free_pods(nodes, [*pods, extra], size, is_ours)
    if is_ours(extra):
        assert after == before  # our own pods are part of the budget, not of the others' usage
    else:
        assert after <= before


@settings(max_examples=200, deadline=None)
@given(nodes=st.lists(nodes_st, max_size=4), pods=st.lists(pods_st, max_size=10), size=sizes_st, extra=nodes_st)
def test_adding_a_node_never_decreases_room(nodes, pods, size, extra):
    assert node_free_pods([*nodes, extra], pods, size, is_ours) >= node_free_pods(nodes, pods, size, is_ours)


# --- pod_budget ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("max_pods", "sources", "expected"),
    [
        (10, {}, 10),  # nothing else known: the configured maximum
        (10, {"quota": None, "cluster": None, "unschedulable_cap": None}, 10),
        (10, {"quota": 4}, 4),
        (10, {"quota": 40, "cluster": 7}, 7),
        (10, {"quota": 6, "cluster": 7, "unschedulable_cap": 3}, 3),
        (10, {"quota": 0, "cluster": 7}, 0),  # a full quota stops everything
        (10, {"cluster": 12, "unschedulable_cap": 11}, 10),
        (10, {"quota": -2}, 0),  # never negative
        (-1, {}, 0),
    ],
)
def test_pod_budget(max_pods, sources, expected):
    assert pod_budget(max_pods, **sources) == expected


opt = st.one_of(st.none(), st.integers(-5, 100))


@settings(max_examples=500)
@given(max_pods=st.integers(-5, 100), quota=opt, cluster=opt, cap=opt)
def test_pod_budget_is_the_floor_of_all_known_sources(max_pods, quota, cluster, cap):
    budget = pod_budget(max_pods, quota=quota, cluster=cluster, unschedulable_cap=cap)
    known = [s for s in (max_pods, quota, cluster, cap) if s is not None]
    assert budget >= 0
    assert all(budget <= max(0, s) for s in known)
    assert budget == 0 or budget in known  # it is one of them, not invented
