"""The fair-share rules (operator/fairshare.py), proved on thousands of random inputs (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from kresize_operator.fairshare import Demand, jain_index, share, stage

jobs_strategy = st.lists(
    st.builds(Demand, name=st.text("abcdefgh", min_size=1, max_size=4), demand=st.integers(0, 40),
              priority=st.integers(1, 5), created=st.floats(0, 1000)),
    max_size=12, unique_by=lambda j: j.name)
EQUAL = st.lists(st.builds(Demand, name=st.text("abcdefgh", min_size=1, max_size=4), demand=st.integers(0, 40),
                           created=st.floats(0, 1000)), max_size=12, unique_by=lambda j: j.name)


@settings(max_examples=3000, deadline=None)
@given(budget=st.integers(0, 60), jobs=jobs_strategy)
def test_the_rules(budget, jobs):
    result = share(budget, jobs)
    by_name = {j.name: j for j in jobs}
    runnable = [j for j in jobs if j.demand > 0]
    assert sum(result.pods.values()) <= budget
    assert set(result.pods) | set(result.queued) == {j.name for j in runnable}  # nothing runnable is lost
    assert not set(result.pods) & set(result.queued)
    for name, pods in result.pods.items():
        assert 1 <= pods <= by_name[name].demand  # at least one, never above demand
    # Work-conserving: either the budget is all given out, or every admitted job has all it can use.
    assert sum(result.pods.values()) == budget or all(p == by_name[n].demand for n, p in result.pods.items())
    # Only a full house queues, and the queue is in priority-then-FIFO order, after everyone admitted.
    assert not result.queued or len(result.pods) == budget
    order = sorted(runnable, key=lambda j: (-j.priority, j.created, j.name))
    assert [j.name for j in order] == [*sorted(result.pods, key=lambda n: order.index(by_name[n])),
                                       *result.queued]
    # Weighted max-min fair: no admitted job could take a pod from one with more pods per weight and still
    # stay ahead of it (moving one pod from a richer job to a poorer one never helps the poorer one's rank).
    for a, pa in result.pods.items():
        for b, pb in result.pods.items():
            ja, jb = by_name[a], by_name[b]
            if pa < ja.demand and pb > 1:  # a wants more, b could give one
                assert pa / ja.priority >= (pb - 1) / jb.priority - 1e-9, (a, pa, b, pb)


@settings(max_examples=2000, deadline=None)
@given(budget=st.integers(0, 60), jobs=EQUAL)
def test_equal_weights_differ_by_at_most_one_unless_capped_by_demand(budget, jobs):
    result = share(budget, jobs)
    by_name = {j.name: j for j in jobs}
    uncapped = [p for n, p in result.pods.items() if p < by_name[n].demand]
    if uncapped:
        assert max(result.pods.values()) - min(uncapped) <= 1


def test_worked_example_of_the_docs():
    jobs = [Demand("A", 10, 1, 1.0), Demand("B", 2, 1, 2.0), Demand("C", 10, 2, 3.0)]
    assert share(6, jobs).pods == {"A": 2, "B": 1, "C": 3}
    small = share(2, jobs)
    assert (small.pods, small.queued) == ({"C": 1, "A": 1}, ("B",))
    assert share(0, jobs).queued == ("C", "A", "B")


def test_jain_index():
    assert jain_index([3, 3, 3]) == 1.0
    assert abs(jain_index([1, 0, 0, 0]) - 0.25) < 1e-12
    assert jain_index([]) == 1.0


@settings(max_examples=2000, deadline=None)
@given(budget=st.integers(0, 30), data=st.data())
def test_staging_never_lets_existing_pods_exceed_the_budget(budget, data):
    names = data.draw(st.lists(st.text("abcdef", min_size=1, max_size=2), unique=True, max_size=8))
    current = {n: data.draw(st.integers(0, 10)) for n in names}
    # Pods that exist: at most what was set, plus pods of an earlier, higher setting still terminating.
    occupied = {n: data.draw(st.integers(0, current[n] + 3)) for n in names}
    targets = {n: t for n in names if (t := data.draw(st.integers(0, 10)))}
    new = stage(targets, current, occupied, budget)
    before = sum(max(occupied[n], current[n]) for n in names)
    # Until the next tick, a job may hold the most of its pods, its old and its new parallelism.
    after = sum(max(occupied[n], current[n], new[n]) for n in names)
    assert after <= max(budget, before)  # never worse than before, and within the budget once it was
    for n in names:
        assert new[n] <= max(targets.get(n, 0), 0)
        assert new[n] >= min(targets.get(n, 0), current[n])  # decreases land at the target, never below
    # Once the pods have settled (occupied == set), a second step reaches the targets when they fit.
    settled = stage(targets, new, dict(new), budget)
    if sum(targets.values()) <= budget:
        assert stage(targets, settled, dict(settled), budget) == {n: targets.get(n, 0) for n in names}


def test_staging_waits_for_terminating_pods_before_growing_another_job():
    # A was lowered from 4 to 2 and two of its pods are still checkpointing: B may grow by nothing yet.
    assert stage({"A": 2, "B": 4}, {"A": 4, "B": 2}, {"A": 4, "B": 2}, 6) == {"A": 2, "B": 2}
    # They have gone: B gets its share.
    assert stage({"A": 2, "B": 4}, {"A": 2, "B": 2}, {"A": 2, "B": 2}, 6) == {"A": 2, "B": 4}
    # A newcomer with nothing running takes what is free at once.
    assert stage({"A": 3, "C": 3}, {"A": 3}, {"A": 3}, 6) == {"A": 3, "C": 3}
    # A was just given 6 and its status shows no pod yet: they may exist. B waits for A's decrease to land.
    assert stage({"A": 3, "B": 3}, {"A": 6}, {"A": 0}, 6) == {"A": 3, "B": 0}
    assert stage({"A": 3, "B": 3}, {"A": 3, "B": 0}, {"A": 3}, 6) == {"A": 3, "B": 3}
