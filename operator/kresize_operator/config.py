"""Operator configuration, from environment variables (documented in the README)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from kresize_common.config import ImageLimits, S3Settings, default_namespace, env_bool, env_int, env_str

from .policy import StoragePolicy


@dataclass(frozen=True)
class Sharding:
    """How the work is cut into Job indexes (see planning.plan_shards)."""

    min_size: int = 8
    max_size: int = 200
    shards_per_worker: int = 4


@dataclass(frozen=True)
class OperatorConfig:
    namespace: str
    s3: S3Settings
    limits: ImageLimits
    resizer_image: str = "kresize/resizer:dev"
    resizer_pull_policy: str = "IfNotPresent"
    resizer_service_account: str = ""
    job_s3_secret: str = "kresize-s3"
    job_s3_endpoint: str = ""
    job_s3_secure: bool = False
    max_parallelism: int = 10
    sharding: Sharding = field(default_factory=Sharding)
    sync_interval: float = 5.0
    max_status_failures: int = 20
    s3_retry_seconds: int = 120
    gc_interval_seconds: int = 600  # 0: no collection of unreferenced originals
    orphan_grace_seconds: int = 3600
    policy: StoragePolicy = field(default_factory=lambda: StoragePolicy("kresize"))
    resources: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> OperatorConfig:
        s3 = S3Settings.from_env()
        return cls(
            namespace=default_namespace(),
            s3=s3,
            limits=ImageLimits.from_env(),
            resizer_image=env_str("KRESIZE_RESIZER_IMAGE", cls.resizer_image),
            resizer_pull_policy=env_str("KRESIZE_RESIZER_PULL_POLICY", cls.resizer_pull_policy),
            resizer_service_account=os.environ.get("KRESIZE_RESIZER_SERVICE_ACCOUNT", "").strip(),
            job_s3_secret=env_str("KRESIZE_JOB_S3_SECRET", cls.job_s3_secret),
            job_s3_endpoint=env_str("KRESIZE_JOB_S3_ENDPOINT", s3.endpoint),
            job_s3_secure=env_bool("KRESIZE_JOB_S3_SECURE", s3.secure),
            max_parallelism=env_int("KRESIZE_MAX_PARALLELISM", cls.max_parallelism, minimum=1),
            sharding=Sharding(
                min_size=env_int("KRESIZE_SHARD_MIN_IMAGES", Sharding.min_size, minimum=1),
                max_size=env_int("KRESIZE_SHARD_MAX_IMAGES", Sharding.max_size, minimum=1),
                shards_per_worker=env_int("KRESIZE_SHARDS_PER_WORKER", Sharding.shards_per_worker, minimum=1),
            ),
            sync_interval=float(env_str("KRESIZE_SYNC_INTERVAL_SECONDS", str(cls.sync_interval))),
            max_status_failures=env_int("KRESIZE_MAX_STATUS_FAILURES", cls.max_status_failures, minimum=0),
            s3_retry_seconds=env_int("KRESIZE_S3_RETRY_SECONDS", cls.s3_retry_seconds, minimum=0),
            gc_interval_seconds=env_int("KRESIZE_GC_INTERVAL_SECONDS", cls.gc_interval_seconds, minimum=0),
            orphan_grace_seconds=env_int("KRESIZE_ORPHAN_GRACE_SECONDS", cls.orphan_grace_seconds, minimum=0),
            policy=StoragePolicy(s3.bucket, frozenset(
                b.strip() for b in os.environ.get("KRESIZE_ALLOWED_BUCKETS", "").split(",") if b.strip())),
            resources={
                "requests": {
                    "cpu": env_str("KRESIZE_RESIZER_CPU_REQUEST", "500m"),
                    "memory": env_str("KRESIZE_RESIZER_MEMORY_REQUEST", "512Mi"),
                },
                "limits": {
                    "cpu": env_str("KRESIZE_RESIZER_CPU_LIMIT", "1"),
                    "memory": env_str("KRESIZE_RESIZER_MEMORY_LIMIT", "1Gi"),
                },
            },
        )
