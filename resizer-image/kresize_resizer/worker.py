"""The cluster path: one Job pod processes the shard of its JOB_COMPLETION_INDEX.

Exit codes decide what the Job controller does: 0 when the shard ran (bad images are failed records,
not pod failures), 1 for infrastructure errors (S3 unreachable for longer than KRESIZE_S3_RETRY_SECONDS,
access denied, missing shard), which makes the Job retry the index within `backoffLimitPerIndex`.
Transient S3 failures are retried in the pod first, so a short outage costs time, not the Job's retries.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from kresize_common import layout, logs
from kresize_common.config import ImageLimits, S3Settings
from kresize_common.formats import OUTPUTS
from kresize_common.records import ImageResult, PodEnv, ShardManifest, Variant, results_from_json, results_to_json
from kresize_common.s3 import (
    RetryPolicy,
    get_bytes,
    get_json,
    is_not_found,
    make_client,
    object_exists,
    put_bytes,
    put_json,
)
from kresize_common.spec import Operations, SpecError, Target
from minio import Minio
from minio.error import S3Error

from .pipeline import ImageError, render_each

log = logging.getLogger("kresize.resizer")


class SourceMissing(Exception):
    pass


def _download(client: Minio, bucket: str, key: str, limits: ImageLimits, retry: RetryPolicy) -> bytes:
    try:
        return retry.call(f"GET {key}", get_bytes, client, bucket, key, limit=limits.max_bytes)
    except S3Error as error:
        if is_not_found(error):
            raise SourceMissing(f"source object not found: s3://{bucket}/{key}") from None
        raise


class Checkpointer:
    """Writes each image's result record soon after it is done, in batches (at most one write a second, and at
    the end), so a pod stopped or killed mid-shard loses at most the last second's images; and reads back what
    earlier attempts of the same index finished, so no finished image is made again."""

    def __init__(self, client: Minio, bucket: str, work: str, index: int, retry: RetryPolicy,
                 interval: float = 1.0) -> None:
        self.client, self.bucket, self.work, self.index, self.retry = client, bucket, work, index, retry
        self.interval = interval
        self.pending: list[ImageResult] = []
        self.batch = 0
        self.flushed_at = time.monotonic()

    def done(self) -> dict[str, ImageResult]:
        """The records earlier attempts checkpointed, by source key; sets the next batch number."""
        prefix = layout.checkpoints_prefix(self.work, self.index)
        names = sorted(o.object_name for o in self.retry.call(
            "LIST checkpoints", lambda: list(self.client.list_objects(self.bucket, prefix=prefix))) if o.object_name)
        self.batch = len(names)
        found: dict[str, ImageResult] = {}
        for name in names:
            found.update((r.source, r) for r in results_from_json(
                self.retry.call(f"GET {name}", get_json, self.client, self.bucket, name)))
        return found

    def add(self, result: ImageResult) -> None:
        self.pending.append(result)
        if time.monotonic() - self.flushed_at >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            key = layout.checkpoint_key(self.work, self.index, self.batch)
            self.retry.call(f"PUT {key}", put_json, self.client, self.bucket, key, results_to_json(self.pending))
            self.batch, self.pending = self.batch + 1, []
        self.flushed_at = time.monotonic()


def process_shard(
    client: Minio, shard: ShardManifest, limits: ImageLimits, retry: RetryPolicy | None = None, *,
    done: Mapping[str, ImageResult] | None = None, on_result: Callable[[ImageResult], None] | None = None,
    stop: threading.Event | None = None,
) -> list[ImageResult]:
    """Resize every image of a shard and upload its variants; returns one result record per image.

    Downloads run one image ahead in a thread so network and CPU overlap. Transient S3 errors are retried
    (`retry`); others, and those that outlast the retry budget, propagate except a missing source: they are
    infrastructure errors and fail the pod. Nothing about one image does: a bad image, and any unexpected
    exception while decoding or resizing it, is a failed record naming the error (with the variants uploaded
    before it, if any). Variants are uploaded as they are made, so only one is in memory at a time.

    Images in `done` (finished by an earlier attempt) are not made again: their records are returned as
    they are. `on_result` sees each new record as soon as it exists. When `stop` is set, the shard ends after
    the image in flight and returns what it has (the caller checkpoints it and exits: see run_from_env).
    """
    retry = retry or RetryPolicy()
    done = done or {}
    images = tuple(image for image in shard.images if image.key not in done)
    try:
        targets = [Target.from_dict(t) for t in shard.targets]
        operations = Operations.from_dict(shard.operations)
    except SpecError as error:
        # The same for every image, and a retried pod would meet it again: fail the images, not the pod.
        log.error("shard %s has targets or operations the resizer cannot use: %s", shard.index, error)
        return [done.get(image.key) or ImageResult.failed(image.key, f"invalid targets or operations: {error}")
                for image in shard.images]
    names = [target.name for target in targets]
    source_bucket, output_bucket = shard.source_bucket, shard.output_bucket
    records: list[ImageResult] = []

    def finished(result: ImageResult) -> None:
        records.append(result)
        if on_result is not None:
            on_result(result)

    with ThreadPoolExecutor(max_workers=1) as pool:
        pending: Future[bytes] | None = None
        for position, image in enumerate(images):
            if stop is not None and stop.is_set():
                break
            if pending is None:
                pending = pool.submit(_download, client, source_bucket, image.key, limits, retry)
            current, pending = pending, None
            if position + 1 < len(images):
                pending = pool.submit(_download, client, source_bucket, images[position + 1].key, limits, retry)
            started = time.perf_counter()
            try:
                data = current.result()  # S3 errors other than a missing source propagate: infrastructure
            except SourceMissing as error:
                finished(ImageResult.failed(image.key, str(error)))
                log.info("failed %s: %s", image.key, error, extra={"image": image.key})
                continue
            del current
            variants = render_each(data, targets, operations, limits)
            del data  # the pipeline drops the encoded input once decoded
            outputs: list[Variant] = []
            failure: str | None = None
            while True:
                try:
                    variant = next(variants, None)
                except ImageError as error:
                    failure = str(error)
                    log.info("failed %s: %s", image.key, failure, extra={"image": image.key})
                    break
                except Exception as error:  # one odd image never fails the shard
                    failure = f"unexpected error while resizing: {type(error).__name__}: {error}"
                    log.warning("failed %s: %s", image.key, failure, exc_info=True, extra={"image": image.key})
                    break
                if variant is None:
                    break
                key = layout.output_key(shard.output_prefix, image.id, variant.target, variant.extension)
                retry.call(f"PUT {key}", put_bytes, client, output_bucket, key, variant.data,
                           OUTPUTS[variant.format].content_type)
                outputs.append(Variant(variant.target, key, variant.width, variant.height, variant.format,
                                       len(variant.data)))
                del variant  # before the next variant is made
            outputs.sort(key=lambda output: names.index(output.target))  # made smallest first
            seconds = time.perf_counter() - started
            finished(ImageResult(image.key, "failed", failure, tuple(outputs), seconds) if failure
                     else ImageResult.succeeded(image.key, outputs, seconds))
            if failure is None:
                log.info("resized %s into %d variants in %.0f ms", image.key, len(outputs),
                         (time.perf_counter() - started) * 1000, extra={"image": image.key})
    made = {record.source: record for record in records}
    return [done.get(image.key) or made[image.key] for image in shard.images
            if image.key in done or image.key in made]


def run_from_env() -> int:
    try:
        logs.setup(logs.log_format())
        settings = S3Settings.from_env()
        limits = ImageLimits.from_env()
        retry = RetryPolicy.from_env()
        work = os.environ[PodEnv.WORK_PREFIX]
        index = int(os.environ[PodEnv.INDEX])
    except (KeyError, ValueError) as error:
        logging.getLogger("kresize.resizer").error("bad configuration: %s", error)
        return 2
    # Every line names the job and the index (and, where it is about one, the image): JSON keys.
    logs.add_context(job=work, index=index)
    client = make_client(settings)
    results = layout.results_key(work, index)
    try:
        # Results are written last, so their presence means an earlier attempt finished this shard.
        if retry.call("HEAD results", object_exists, client, settings.bucket, results):
            log.info("shard %d already done (%s); nothing to do", index, results)
            return 0
        raw = retry.call("GET shard", get_json, client, settings.bucket, layout.shard_key(work, index))
        shard = ShardManifest.from_json(raw)
        checkpoints = Checkpointer(client, settings.bucket, work, index, retry)
        done = checkpoints.done()
        if done:
            log.info("shard %d: %d of %d images were finished by an earlier attempt; not redoing them", index,
                     len(done), len(shard.images))
        stop = threading.Event()
        # SIGTERM (a scale-down or a deletion): finish the image in flight, checkpoint, exit STOPPED_EXIT_CODE.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        records = process_shard(client, shard, limits, retry, done=done, on_result=checkpoints.add, stop=stop)
        checkpoints.flush()
        if len(records) < len(shard.images):
            log.info("shard %d stopped by SIGTERM after %d of %d images; checkpointed", index, len(records),
                     len(shard.images))
            return PodEnv.STOPPED_EXIT_CODE
        retry.call("PUT results", put_json, client, settings.bucket, results, results_to_json(records))
    except Exception as error:  # noqa: BLE001 - any I/O failure here is an infrastructure error
        log.error("shard %d failed with an infrastructure error, the Job will retry it: %s: %s",
                  index, type(error).__name__, error)
        return 1
    failed = sum(1 for r in records if r.status == "failed")
    log.info("shard %d done: %d images, %d failed", index, len(records), failed)
    return 0
