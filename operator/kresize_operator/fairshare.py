"""How one pod budget is shared among ResizeJobs: a pure function, proved by property tests.

Rules (tests/test_fairshare.py checks each on thousands of random inputs):
- a job never gets more pods than its demand (its unfinished shards);
- every admitted job gets at least one pod;
- work-conserving: while any admitted job has demand left, the whole budget is handed out;
- weighted max-min fair: pods go one at a time to the admitted job with the fewest pods per unit of weight
  (ties: higher priority, then older, then name), so with equal weights shares differ by at most one;
- when the budget cannot give every runnable job a pod, jobs are admitted in priority order, then first
  come first served; the others wait in a queue, in that order, holding nothing.

Worked example (also in docs/design.md): budget 6; A (demand 10, priority 1, oldest), B (demand 2, priority 1),
C (demand 10, priority 2). Each gets 1, 3 are left, and go one at a time to the lowest pods per weight: C (1/2);
then A, B and C tie at 1 and C wins on priority; then A and B tie at 1 and A is older: A 2, B 1, C 3.
With a budget of 2, C and A are admitted (priority, then age) and B waits, first in the queue.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Demand:
    name: str
    demand: int  # shards not finished yet; 0: nothing to run
    priority: int = 1  # the weight of its share, and its place in the queue
    created: float = 0.0  # creation time, for first come first served


@dataclass(frozen=True)
class Shares:
    pods: dict[str, int]  # admitted jobs -> parallelism
    queued: tuple[str, ...]  # waiting for a pod, in admission order (position 1 first)


def _order(job: Demand) -> tuple[int, float, str]:
    return (-job.priority, job.created, job.name)


def share(budget: int, jobs: Iterable[Demand]) -> Shares:
    runnable = sorted((j for j in jobs if j.demand > 0), key=_order)
    admitted, queued = runnable[:max(budget, 0)], runnable[max(budget, 0):]
    pods = {job.name: 1 for job in admitted}
    left = max(budget, 0) - len(admitted)
    # A heap of (pods per weight, order) over the jobs that still have demand beyond their pods.
    heap = [(1 / job.priority, _order(job), job) for job in admitted if job.demand > 1]
    heapq.heapify(heap)
    while left > 0 and heap:
        _, order, job = heapq.heappop(heap)
        pods[job.name] += 1
        left -= 1
        if pods[job.name] < job.demand:
            heapq.heappush(heap, (pods[job.name] / job.priority, order, job))
    return Shares(pods, tuple(job.name for job in queued))


def stage(targets: dict[str, int], current: dict[str, int], occupied: dict[str, int], budget: int) -> dict[str, int]:
    """The parallelism to set now on the way to `targets`, so that pods that still exist never exceed the budget.

    `current` is each job's parallelism as set, `occupied` its pods known to exist (active and terminating). A
    Job may hold as many pods as its parallelism allows before its status says so, and a lowered Job keeps its
    pods until they have checkpointed and exited: so a job's footprint is the most of its pods, its parallelism as
    set and as set now, and what another job may gain this tick is only what is free of all footprints. Decreases
    apply at once, but free their pods only on a later tick (when `current` is the lowered value and the pods are
    gone); increases share the headroom, fewest pods first (ties by name). A job missing from `targets` gets 0
    (queued or suspended).
    """
    names = set(targets) | set(current)
    new = {name: min(targets.get(name, 0), current.get(name, 0)) for name in names}

    def footprint(name: str) -> int:
        return max(occupied.get(name, 0), current.get(name, 0), new[name])

    headroom = budget - sum(footprint(name) for name in names)
    wanting = [name for name in names if targets.get(name, 0) > new[name]]
    while headroom > 0 and wanting:
        name = min(wanting, key=lambda n: (new[n], n))
        before = footprint(name)
        new[name] += 1
        headroom -= footprint(name) - before  # a job refilling its own terminating pods' places costs nothing
        if new[name] >= targets[name]:
            wanting.remove(name)
    return new


def jain_index(allocations: Sequence[float]) -> float:
    """Jain's fairness index of (weight-normalised) allocations: 1 is perfectly fair, 1/n the least."""
    if not allocations or not any(allocations):
        return 1.0
    return sum(allocations) ** 2 / (len(allocations) * sum(a * a for a in allocations))
