"""Sharding, parallelism and status decisions of the operator (pure functions)."""

import pytest
from kresize_common.ranges import compress_ranges, expand_ranges
from kresize_operator.config import Sharding
from kresize_operator.planning import (
    final_phase,
    job_name_for,
    plan_shards,
    set_condition,
    throughput,
)

SHARDING = Sharding()  # the defaults: at least 20 images a shard, at most 5000, 2 shards per pod


@pytest.mark.parametrize(
    ("total", "spec_cap", "op_cap", "size", "shards"),
    [
        (1, 8, 10, 20, 1),  # tiny job: one shard, never empty shards
        (33, 8, 10, 20, 2),  # small job: the minimum shard size wins
        (300, 4, 10, 38, 8),  # 4 pods x 2 shards each: 8 pod starts, not one per 8 images
        (1000, 50, 10, 50, 20),  # the pod budget limits the spec cap
        (100_000, 8, 10, 5000, 20),  # huge job: shards grow, pod starts do not (max size bounds a manifest)
        (1_000_000, 8, 10, 5000, 200),
    ],
)
def test_plan_shards(total, spec_cap, op_cap, size, shards):
    plan = plan_shards(total, spec_cap, op_cap, SHARDING)
    assert (plan.shard_size, plan.shards) == (size, shards)
    covered = [i for s in range(plan.shards) for i in range(*plan.shard_bounds(s))]
    assert covered == list(range(total))  # every image in exactly one shard


def test_pod_starts_grow_with_parallelism_not_with_images():
    starts = {total: plan_shards(total, 8, 8, SHARDING).shards for total in (2_000, 20_000, 200_000)}
    assert starts == {2_000: 16, 20_000: 16, 200_000: 40}  # 2 per pod, until a shard reaches max_size


def test_plan_shards_refuses_empty_work():
    with pytest.raises(ValueError):
        plan_shards(0, 8, 10, SHARDING)


def test_throughput_over_samples():
    assert throughput([]) is None
    assert throughput([(0.0, 0), (1.0, 10)]) is None  # too short a span to say
    assert throughput([(0.0, 0), (2.0, 10), (4.0, 30)]) == 7.5
    assert throughput([(0.0, 5), (3.0, 5)]) == 0.0


@pytest.mark.parametrize(
    ("text", "indexes"),
    [("", set()), ("0", {0}), ("0-2,5", {0, 1, 2, 5}), ("1,3-4,7-9", {1, 3, 4, 7, 8, 9})],
)
def test_ranges_round_trip(text, indexes):
    assert expand_ranges(text) == indexes
    assert compress_ranges(indexes) == text


@pytest.mark.parametrize(
    ("succeeded", "failed", "total", "phase"),
    [(10, 0, 10, "Succeeded"), (7, 3, 10, "PartiallyFailed"), (0, 10, 10, "Failed")],
)
def test_final_phase(succeeded, failed, total, phase):
    assert final_phase(succeeded, failed, total) == phase


def test_set_condition_keeps_transition_time_while_status_holds():
    first = set_condition([], "Progressing", "True", "JobCreated", "a", 1, "2026-01-01T00:00:00Z")
    same = set_condition(first, "Progressing", "True", "Still", "b", 2, "2026-01-01T00:05:00Z")
    flipped = set_condition(same, "Progressing", "False", "Done", "c", 2, "2026-01-01T00:09:00Z")
    assert same[0]["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert same[0]["reason"] == "Still" and same[0]["observedGeneration"] == 2
    assert flipped[0]["lastTransitionTime"] == "2026-01-01T00:09:00Z"
    assert len(flipped) == 1


def test_job_names_are_deterministic_and_fit_labels():
    assert job_name_for("photos") == "photos-resize"
    long = "x" * 200
    assert job_name_for(long) == job_name_for(long)
    assert len(job_name_for(long)) <= 63
    assert job_name_for(long) != job_name_for("x" * 199)
