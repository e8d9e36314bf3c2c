"""The operator's Prometheus metrics (prometheus-client), served on KRESIZE_METRICS_PORT at /metrics.

Resizer pods are short-lived and never scraped: their per-image timings reach Prometheus through the result
records the operator reads when it counts a finished shard.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import kopf
from prometheus_client import Counter, Gauge, Histogram

PHASES = ("New", "Pending", "Queued", "Running", "Suspended", "Succeeded", "PartiallyFailed", "Failed")
RESIZEJOBS = Gauge("kresize_resizejobs", "ResizeJobs in the watched namespace, by phase", ["phase"])
IMAGES = Counter("kresize_images", "Images finished, by outcome", ["status"])
IMAGE_SECONDS = Histogram("kresize_image_duration_seconds", "Time to render and upload one image's variants",
                          buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
SHARD_SECONDS = Histogram("kresize_shard_duration_seconds", "Time a pod spent on one shard's images",
                          buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800))
PODS_IN_USE = Gauge("kresize_pods_in_use", "Resizer pods that exist (active or terminating), all ResizeJobs")
POD_BUDGET = Gauge("kresize_pod_budget", "The pod budget all ResizeJobs share: the smallest of KRESIZE_MAX_PODS, "
                   "the ResourceQuota headroom, free cluster capacity (if enabled) and the unschedulable cap")
QUEUE_LENGTH = Gauge("kresize_queue_length", "ResizeJobs waiting for a pod (phase Queued)")
RECONCILE_SECONDS = Histogram("kresize_reconcile_duration_seconds", "Time of one handler call", ["handler"])
RECONCILE_ERRORS = Counter("kresize_reconcile_errors", "Handler calls that raised (kopf retries them)",
                           ["handler"])

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def timed(handler: F) -> F:
    """Count a handler's duration and errors under its name."""
    name = handler.__name__

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await handler(*args, **kwargs)
        except Exception:
            RECONCILE_ERRORS.labels(name).inc()
            raise
        finally:
            RECONCILE_SECONDS.labels(name).observe(time.perf_counter() - started)

    return wrapper  # type: ignore[return-value]


class Census:
    """Each ResizeJob's phase by uid, mirrored into the gauge as watch events arrive."""

    def __init__(self) -> None:
        self._jobs: dict[str, str] = {}
        for phase in PHASES:
            RESIZEJOBS.labels(phase).set(0)

    def update(self, uid: str, body: kopf.Body | None) -> None:
        if body is None:
            self._jobs.pop(uid, None)
        else:
            self._jobs[uid] = (body.get("status") or {}).get("phase") or "New"
        counts = dict.fromkeys(PHASES, 0)
        for phase in self._jobs.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, count in counts.items():
            RESIZEJOBS.labels(phase).set(count)
