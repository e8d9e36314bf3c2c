"""The operator's S3 side: listing originals, writing the work plan (reusing what earlier jobs made), reading
shard results."""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, NamedTuple

from kresize_common import layout
from kresize_common.cache import content_identity, scoped_identity
from kresize_common.records import ImageRef, ImageResult, ShardManifest, results_from_json, results_to_json
from kresize_common.resizejob import ResizeJobSpec
from kresize_common.s3 import ensure_bucket, get_json, get_json_or_none, put_json, remove_prefix
from minio import Minio
from minio.error import S3Error

from .config import OperatorSettings
from .planning import ShardPlan, plan_shards
from .reuse import reuse_variants

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


class SourceObject(NamedTuple):
    key: str
    etag: str | None  # as the listing gave it (content_identity: result reuse); None for `keys` sources


def list_source_objects(client: Minio, bucket: str, source: dict[str, Any]) -> list[SourceObject]:
    """The source's objects: the listed ones sorted by key, or the named ones (`keys`) in their order."""
    prefix = source.get("prefix", "")
    if source.get("keys"):
        # Named, not listed, so no ETag: a HEAD per key would cost more than reuse saves on a first run. Uploaded
        # originals need none (their sha256 is in the name); other named objects are not reused.
        return [SourceObject(layout.source_object_key(prefix, key), None) for key in source["keys"]]
    try:
        listed = [SourceObject(o.object_name, o.etag)
                  for o in client.list_objects(bucket, prefix=prefix, recursive=True)
                  if o.object_name and not o.object_name.endswith("/")]
    except S3Error as error:
        if error.code == "NoSuchBucket":
            raise PermanentSourceError(f"source bucket {bucket!r} does not exist") from None
        raise
    return sorted(listed, key=lambda o: o.key)


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
    cache_scope: str = "",
) -> ShardPlan:
    """Write the shard manifests, then plan.json. Idempotent: an existing plan is reused as it is,
    so a restart never re-lists a prefix whose content changed in between.

    Images resized before (same content, same target parameters: reuse.py) get their variants copied to this
    job's output keys instead, and their `reused` records go into their shard's first checkpoint batch, which
    its pod treats as finished images; a shard whose images were all reused gets its results too, so its pod
    (if any starts) has nothing to do and `shard_records` reads them. `plan.reused` counts them; when it is
    every image (`all_reused`), no pod is needed at all."""
    bucket = config.s3.bucket
    existing = get_json_or_none(client, bucket, layout.plan_key(work))
    if existing is not None:
        return ShardPlan(total=existing["total"], shard_size=existing["shardSize"], shards=existing["shards"],
                         reused=existing.get("reused", 0))
    if not _bucket_seen(client, bucket):
        ensure_bucket(client, bucket)
    if not _bucket_seen(client, placement.output_bucket):
        raise PermanentSourceError(f"output bucket {placement.output_bucket!r} does not exist")
    objects = list_source_objects(client, placement.source_bucket, spec["source"])
    if not objects:
        where = f"s3://{placement.source_bucket}/{spec['source'].get('prefix', '')}"
        raise PermanentSourceError(f"no images found under {where}")
    parallelism = ResizeJobSpec.from_dict(spec).parallelism
    plan = plan_shards(len(objects), parallelism, config.max_pods, config.sharding)
    prefix = spec["source"].get("prefix", "")
    images = [ImageRef(o.key, layout.image_id(o.key, prefix)) for o in objects]
    # Originals are named by their content only in the platform bucket, where the API alone writes them.
    trusted = placement.source_bucket == bucket
    reused = reuse_variants(
        client, bucket, [(image, scoped_identity(cache_scope, content_identity(o.key, o.etag,
                                                                               originals_trusted=trusted)))
                         for image, o in zip(images, objects, strict=True)],
        spec["targets"], spec.get("operations"), placement.output_bucket, placement.output_prefix,
    ) if spec.get("reuse", True) else {}
    plan = dataclasses.replace(plan, reused=len(reused))
    if any(True for _ in client.list_objects(bucket, prefix=work)):
        # An earlier attempt stopped before plan.json: no pod has run (the Job comes after the plan), so its
        # checkpoints and results are its reuse records, which may not be this attempt's (a variant deleted
        # since): drop them.
        remove_prefix(client, bucket, layout.checkpoints_root(work))
        remove_prefix(client, bucket, layout.results_prefix(work))

    def write_shard(index: int) -> None:
        start, end = plan.shard_bounds(index)
        manifest = ShardManifest(
            index=index, source_bucket=placement.source_bucket, output_bucket=placement.output_bucket,
            output_prefix=placement.output_prefix, targets=tuple(spec["targets"]), operations=spec["operations"],
            images=tuple(images[start:end]), cache_scope=cache_scope)
        put_json(client, bucket, layout.shard_key(work, index), manifest.to_json())
        records = [reused[image.key] for image in images[start:end] if image.key in reused]
        if records:
            put_json(client, bucket, layout.checkpoint_key(work, index, 0), results_to_json(records))
        if len(records) == end - start:
            put_json(client, bucket, layout.results_key(work, index), results_to_json(records))

    # The shards are written concurrently (the client's pool holds 16 connections), so creating the Job does
    # not wait on one S3 round trip after another; the plan, the commit marker, only once all are written.
    with ThreadPoolExecutor(max_workers=SHARD_WRITERS) as writers:
        list(writers.map(write_shard, range(plan.shards)))  # list(): the first error propagates
    put_json(client, bucket, layout.plan_key(work), {
        "total": plan.total, "shardSize": plan.shard_size, "shards": plan.shards, "reused": plan.reused,
    })
    return plan


def all_reused(plan: ShardPlan) -> bool:
    """Every image of the plan was reused at planning: the job is done without a pod (every shard's results are
    written, see ensure_plan)."""
    return plan.total > 0 and plan.reused == plan.total


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
