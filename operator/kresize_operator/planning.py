"""Pure decisions: how to shard the work, how many pods to run, and what the status says.

Sharding rule: a Job index is a shard, and a pod processes one. Pod starts per job should grow with its
parallelism, not with its image count (a start costs seconds), so the shard count is bounded by the most pods
the job may get, times `shards_per_worker` (2: a slow shard does not leave the other pods idle at the end),
with at least `min_size` images a shard and at most `max_size` (a bound on a manifest's size):

    parallel  = min(spec.parallelism, KRESIZE_MAX_PODS)
    shardSize = clamp(ceil(total / (parallel * shards_per_worker)), min_size, max_size)
    shards    = ceil(total / shardSize)

A large shard costs nothing extra when its pod is stopped: the pod checkpoints each image as it finishes, and
the retried index skips them. How many pods run at once is the scheduler's decision (fairshare.py).
"""

from __future__ import annotations

import datetime
import hashlib
import math
from dataclasses import dataclass

from .config import Sharding


@dataclass(frozen=True)
class ShardPlan:
    total: int
    shard_size: int
    shards: int
    reused: int = 0  # images whose variants were copied from earlier jobs at planning (storage.ensure_plan)

    def shard_bounds(self, index: int) -> tuple[int, int]:
        start = index * self.shard_size
        return start, min(start + self.shard_size, self.total)


def plan_shards(total: int, spec_parallelism: int, max_pods: int, sharding: Sharding) -> ShardPlan:
    if total <= 0:
        raise ValueError("nothing to shard")
    parallel = max(1, min(spec_parallelism, max_pods))
    wanted = math.ceil(total / (parallel * sharding.shards_per_worker))
    size = max(sharding.min_size, min(sharding.max_size, wanted))
    return ShardPlan(total=total, shard_size=size, shards=math.ceil(total / size))


def throughput(samples: list[tuple[float, int]]) -> float | None:
    """Images a second over (time, images done) samples, oldest first; None until they span 2 s."""
    if len(samples) < 2 or samples[-1][0] - samples[0][0] < 2:
        return None
    return max(0.0, (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0]))


def timestamp(when: datetime.datetime | None = None) -> str:
    """`when` (default: now) as Kubernetes writes times: RFC 3339 in UTC, whole seconds."""
    return (when or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str | None) -> datetime.datetime | None:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None


def final_phase(succeeded: int, failed: int, total: int) -> str:
    """Phase of a finished run: Succeeded, PartiallyFailed or Failed (nothing succeeded)."""
    if succeeded == total and failed == 0:
        return "Succeeded"
    if succeeded == 0:
        return "Failed"
    return "PartiallyFailed"


def set_condition(
    conditions: list[dict], type_: str, status: str, reason: str, message: str, generation: int, now: str,
) -> list[dict]:
    """Upsert a standard condition; lastTransitionTime changes only when the status does."""
    result = [dict(c) for c in conditions if c.get("type") != type_]
    previous = next((c for c in conditions if c.get("type") == type_), None)
    transition = previous["lastTransitionTime"] if previous and previous.get("status") == status else now
    result.append({
        "type": type_, "status": status, "reason": reason, "message": message,
        "lastTransitionTime": transition, "observedGeneration": generation,
    })
    return sorted(result, key=lambda c: c["type"])


def job_name_for(resizejob_name: str) -> str:
    """Deterministic Job name within 63 characters (the job-name label limit)."""
    name = f"{resizejob_name}-resize"
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(resizejob_name.encode()).hexdigest()[:10]
    return f"{resizejob_name[:45].rstrip('-.')}-{digest}-resize"
