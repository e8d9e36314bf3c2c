"""Sharding, parallelism and status decisions of the operator (pure functions)."""

import pytest
from kresize_operator.config import Sharding
from kresize_operator.planning import (
    compress_ranges,
    decide_parallelism,
    expand_ranges,
    final_phase,
    job_name_for,
    plan_shards,
    set_condition,
)

SHARDING = Sharding(min_size=8, max_size=200, shards_per_worker=4)


@pytest.mark.parametrize(
    ("total", "spec_cap", "op_cap", "size", "shards"),
    [
        (1, 8, 10, 8, 1),  # tiny job: one shard, never empty shards
        (33, 8, 10, 8, 5),  # small job: min shard size wins
        (1000, 8, 10, 32, 32),  # 8 pods x 4 shards each
        (1000, 50, 10, 25, 40),  # the operator cap limits the spec cap
        (100_000, 8, 10, 200, 500),  # huge job: max shard size caps retry cost
    ],
)
def test_plan_shards(total, spec_cap, op_cap, size, shards):
    plan = plan_shards(total, spec_cap, op_cap, SHARDING)
    assert (plan.shard_size, plan.shards) == (size, shards)
    covered = [i for s in range(plan.shards) for i in range(*plan.shard_bounds(s))]
    assert covered == list(range(total))  # every image in exactly one shard


def test_plan_shards_refuses_empty_work():
    with pytest.raises(ValueError):
        plan_shards(0, 8, 10, SHARDING)


@pytest.mark.parametrize(
    ("remaining", "spec_cap", "op_cap", "expected"),
    [(100, 8, 10, 8), (100, 50, 10, 10), (3, 8, 10, 3), (1, 8, 10, 1), (0, 8, 10, 1)],
)
def test_decide_parallelism(remaining, spec_cap, op_cap, expected):
    assert decide_parallelism(remaining, spec_cap, op_cap) == expected


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
