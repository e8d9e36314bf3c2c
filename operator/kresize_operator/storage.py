"""The operator's S3 side: listing originals, writing the work plan, reading shard results."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from kresize_common import layout
from kresize_common.records import ImageRef, ImageResult, ShardManifest, results_from_json
from kresize_common.resizejob import ResizeJobSpec
from kresize_common.s3 import ensure_bucket, get_json, get_json_or_none, put_json, remove_prefix
from minio import Minio
from minio.error import S3Error

from .config import OperatorSettings
from .planning import ShardPlan, plan_shards

SHARD_WRITERS = 8


class PermanentSourceError(Exception):
    """The source can never be processed (missing bucket, no images): the job fails, no retry."""


@dataclass(frozen=True)
class Placement:
    source_bucket: str
    output_bucket: str
    output_prefix: str


def placement_for(spec: dict[str, Any], namespace: str, name: str, config: OperatorSettings) -> Placement:
    output = spec.get("output") or {}
    return Placement(
        source_bucket=spec["source"].get("bucket") or config.s3.bucket,
        output_bucket=output.get("bucket") or config.s3.bucket,
        output_prefix=output.get("prefix") or layout.default_output_prefix(namespace, name),
    )


def list_source_keys(client: Minio, bucket: str, source: dict[str, Any]) -> list[str]:
    prefix = source.get("prefix", "")
    if source.get("keys"):
        return [layout.source_object_key(prefix, key) for key in source["keys"]]
    try:
        names = [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True)]
    except S3Error as error:
        if error.code == "NoSuchBucket":
            raise PermanentSourceError(f"source bucket {bucket!r} does not exist") from None
        raise
    return sorted(n for n in names if n and not n.endswith("/"))


BUCKET_SEEN_SECONDS = 60.0
_buckets_seen: dict[str, float] = {}  # bucket -> when it was last seen to exist


def _bucket_seen(client: Minio, bucket: str) -> bool:
    """Whether the bucket exists, remembered for a minute once it does: a burst of 500 new jobs would otherwise
    ask S3 the same two questions 1,000 times."""
    if time.monotonic() - _buckets_seen.get(bucket, -BUCKET_SEEN_SECONDS) < BUCKET_SEEN_SECONDS:
        return True
    if client.bucket_exists(bucket):
        _buckets_seen[bucket] = time.monotonic()
        return True
    return False


def ensure_plan(
    client: Minio, config: OperatorSettings, work: str, spec: dict[str, Any], placement: Placement,
) -> ShardPlan:
    """Write the shard manifests, then plan.json. Idempotent: an existing plan is reused as it is,
    so a restart never re-lists a prefix whose content changed in between."""
    bucket = config.s3.bucket
    existing = get_json_or_none(client, bucket, layout.plan_key(work))
    if existing is not None:
        return ShardPlan(total=existing["total"], shard_size=existing["shardSize"], shards=existing["shards"])
    if not _bucket_seen(client, bucket):
        ensure_bucket(client, bucket)
    if not _bucket_seen(client, placement.output_bucket):
        raise PermanentSourceError(f"output bucket {placement.output_bucket!r} does not exist")
    keys = list_source_keys(client, placement.source_bucket, spec["source"])
    if not keys:
        where = f"s3://{placement.source_bucket}/{spec['source'].get('prefix', '')}"
        raise PermanentSourceError(f"no images found under {where}")
    parallelism = ResizeJobSpec.from_dict(spec).parallelism
    plan = plan_shards(len(keys), parallelism, config.max_pods, config.sharding)
    prefix = spec["source"].get("prefix", "")


    def write_shard(index: int) -> None:
        start, end = plan.shard_bounds(index)
        manifest = ShardManifest(
            index=index, source_bucket=placement.source_bucket, output_bucket=placement.output_bucket,
            output_prefix=placement.output_prefix, targets=tuple(spec["targets"]), operations=spec["operations"],
            images=tuple(ImageRef(key, layout.image_id(key, prefix)) for key in keys[start:end]))
        put_json(client, bucket, layout.shard_key(work, index), manifest.to_json())

    # The shards are written concurrently (the client's pool holds 16 connections), so creating the Job does
    # not wait on one S3 round trip after another; the plan, the commit marker, only once all are written.
    with ThreadPoolExecutor(max_workers=SHARD_WRITERS) as writers:
        list(writers.map(write_shard, range(plan.shards)))  # list(): the first error propagates
    put_json(client, bucket, layout.plan_key(work), {
        "total": plan.total, "shardSize": plan.shard_size, "shards": plan.shards,
    })
    return plan


def shard_records(
    client: Minio, bucket: str, work: str, index: int, *, failed_reason: str | None,
) -> list[ImageResult]:
    """Result records of one finished index. A failed index (or one whose results are missing)
    yields a failed record per image of its shard, so no image is ever silently lost."""
    if failed_reason is None:
        records = get_json_or_none(client, bucket, layout.results_key(work, index))
        if records is not None:
            return results_from_json(records)
        failed_reason = f"shard {index} finished without writing results"
    shard = ShardManifest.from_json(get_json(client, bucket, layout.shard_key(work, index)))
    return [ImageResult.failed(image.key, failed_reason) for image in shard.images]


def remove_job_files(client: Minio, config: OperatorSettings, *, work: str, outputs: dict[str, Any] | None) -> int:
    """Delete a job's work files (plan, shards, checkpoints, results) and, when `outputs` (status.results) is
    given, its variants. Returns how many objects were deleted. Blocking I/O; idempotent."""
    removed = remove_prefix(client, config.s3_bucket, work)
    if outputs and outputs.get("outputBucket") and outputs.get("outputPrefix"):
        removed += remove_prefix(client, outputs["outputBucket"], outputs["outputPrefix"])
    return removed
