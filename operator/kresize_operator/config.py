"""Operator configuration from KRESIZE_* environment variables (documented in the README), typed and
validated at start-up (`typed_settings.load`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from kresize_common.typed_settings import CommonSettings
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from .budget import PodSize
from .policy import StoragePolicy


@dataclass(frozen=True)
class Sharding:
    """How the work is cut into Job indexes (see planning.plan_shards)."""

    min_size: int = 20  # a pod start costs seconds: give each at least this much work
    max_size: int = 5000  # bounds a shard manifest (about 100 bytes an image)
    shards_per_worker: int = 2


class OperatorSettings(CommonSettings):
    resizer_image: str = "kresize/resizer:dev"
    resizer_pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"
    resizer_service_account: str = ""
    # A pod renders one image per CPU of its limit, as far as its memory limit holds worst-case images (1 GiB
    # each: resizer cores.py): 2 CPUs and 2 GiB render two at once, 1.7-1.9x the images/s of one CPU
    # (bench/bench_cores.py), with half the pod starts and interpreters. Requests are half the limits: most
    # images need a fraction of the worst case, and a pod on a busy node still renders, slower.
    resizer_cpu_request: str = "1"
    resizer_cpu_limit: str = "2"
    resizer_memory_request: str = "1Gi"
    resizer_memory_limit: str = "2Gi"
    job_s3_secret: str = "kresize-s3"
    job_s3_endpoint: str = ""  # empty: the operator's own
    job_s3_secure: bool | None = None  # unset: the operator's own
    max_pods: PositiveInt = 10  # the pod budget all ResizeJobs share (before quota and capacity)
    quota_aware: bool = True  # the namespace's ResourceQuotas bound the budget
    cluster_capacity: bool = False  # free node capacity bounds the budget (needs a ClusterRole: nodes, pods)
    capacity_interval_seconds: PositiveFloat = 10.0  # how often quotas and node capacity are re-read at most
    unschedulable_backoff_seconds: PositiveFloat = 30.0  # after pods stayed unschedulable, hold the budget down
    ttl_seconds_after_finished: NonNegativeInt | None = None  # default of spec.ttlSecondsAfterFinished
    shard_min_images: PositiveInt = Sharding.min_size
    shard_max_images: PositiveInt = Sharding.max_size
    shards_per_worker: PositiveInt = Sharding.shards_per_worker
    schedule_interval_seconds: PositiveFloat = 2.0  # the scheduler's tick, besides the events that wake it
    progress_interval_seconds: PositiveFloat = 5.0  # how often running jobs' checkpoints are counted
    max_status_failures: NonNegativeInt = 20
    s3_retry_seconds: NonNegativeInt = 120
    gc_interval_seconds: NonNegativeInt = 600  # 0: no collection of unreferenced originals
    orphan_grace_seconds: NonNegativeInt = 3600
    allowed_buckets: str = ""  # comma-separated, besides s3_bucket
    metrics_port: NonNegativeInt = 9090  # 0: no metrics endpoint
    operator_liveness: str = ""  # e.g. http://0.0.0.0:8081/healthz

    @property
    def sharding(self) -> Sharding:
        return Sharding(self.shard_min_images, self.shard_max_images, self.shards_per_worker)

    @property
    def policy(self) -> StoragePolicy:
        extra = frozenset(b.strip() for b in self.allowed_buckets.split(",") if b.strip())
        return StoragePolicy(self.s3_bucket, extra)

    @property
    def pod_s3_endpoint(self) -> str:
        return self.job_s3_endpoint or self.s3_endpoint

    @property
    def pod_s3_secure(self) -> bool:
        return self.s3_secure if self.job_s3_secure is None else self.job_s3_secure

    @property
    def budget_pod_size(self) -> PodSize:
        r = self.resources
        return PodSize(requests=r["requests"], limits=r["limits"])

    @property
    def resources(self) -> dict[str, dict[str, str]]:
        return {"requests": {"cpu": self.resizer_cpu_request, "memory": self.resizer_memory_request},
                "limits": {"cpu": self.resizer_cpu_limit, "memory": self.resizer_memory_limit}}
