"""The cluster path: one Job pod processes the shard of its JOB_COMPLETION_INDEX.

Exit codes decide what the Job controller does: 0 when the shard ran (bad images are failed records,
not pod failures), 1 for infrastructure errors (S3 unreachable for longer than KRESIZE_S3_RETRY_SECONDS,
access denied, missing shard), which makes the Job retry the index within `backoffLimitPerIndex`.
Transient S3 failures are retried in the pod first, so a short outage costs time, not the Job's retries.

Beside its results, a pod writes two things no one depends on for correctness, whose failures are only logged:
its shard's heartbeat (layout.heartbeat_key, while it works) and a result-cache entry per variant it makes
(layout.cache_key), which later jobs of the same images and targets reuse instead of resizing again.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor

from kresize_common import layout, logs
from kresize_common.cache import content_identity, params_hash, scoped_identity
from kresize_common.config import ImageLimits, S3Settings
from kresize_common.formats import OUTPUTS
from kresize_common.records import (
    CachedVariant,
    CacheEntry,
    ImageRef,
    ImageResult,
    PodEnv,
    ShardManifest,
    Variant,
    heartbeat_json,
    results_from_json,
    results_to_json,
)
from kresize_common.s3 import (
    RetryPolicy,
    get_json,
    get_json_or_none,
    is_not_found,
    make_client,
    object_exists,
    put_json,
)
from kresize_common.spec import Operations, SpecError, Target
from minio import Minio
from minio.error import S3Error

from .cores import pipelined, render_workers
from .pipeline import ImageError, render_each

# An image's last variant is uploaded in the background, its worker taking the next image meanwhile, when it is at
# most this many bytes: in the worst case the next image's peak comes on top (docs/design.md, "Memory bounds").
BACKGROUND_UPLOAD_MAX = 16 << 20

log = logging.getLogger("kresize.resizer")


class SourceMissing(Exception):
    pass


def _get(client: Minio, bucket: str, key: str, limit: int) -> tuple[bytes, str | None]:
    """At most limit + 1 bytes of an object (so oversize shows), and its ETag: the GET's answer carries it, so
    the result cache's identity of a source costs no extra request."""
    response = client.get_object(bucket, key)
    try:
        return response.read(limit + 1), response.headers.get("ETag")
    finally:
        response.close()
        response.release_conn()


def _download(client: Minio, bucket: str, key: str, limits: ImageLimits, retry: RetryPolicy,
              ) -> tuple[bytes, str | None]:
    try:
        return retry.call(f"GET {key}", _get, client, bucket, key, limits.max_bytes)
    except S3Error as error:
        if is_not_found(error):
            raise SourceMissing(f"source object not found: s3://{bucket}/{key}") from None
        raise


def _put(client: Minio, bucket: str, key: str, data: bytes, content_type: str) -> str | None:
    """Upload a variant; its ETag, which its cache entry records (a reuse copies it only if unchanged)."""
    return client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type).etag


class Heartbeat:
    """The shard's heartbeat (layout.heartbeat_key): written when the pod starts the shard, renewed every
    `interval` seconds by a thread (so an image that takes long does not make the pod look gone) and when a
    checkpoint batch is written, deleted when the pod stops. One attempt each: a missed beat is only logged;
    readers allow several (records.heartbeat_is_fresh)."""

    def __init__(self, client: Minio, bucket: str, work: str, index: int, interval: float = 5.0) -> None:
        self.client, self.bucket, self.interval = client, bucket, interval
        self.key = layout.heartbeat_key(work, index)
        self._lock = threading.Lock()  # a beat never lands after the deletion
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self.beat()
        self._thread = threading.Thread(target=self._run, name="heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval):
            self.beat()

    def beat(self) -> None:
        # A beat already being written makes this one redundant: the shard's thread never waits on the other's.
        if not self._lock.acquire(blocking=False):
            return
        try:
            if not self._stopped.is_set():
                put_json(self.client, self.bucket, self.key, heartbeat_json(time.time()))
        except Exception as error:  # noqa: BLE001 - the heartbeat never fails the shard
            log.warning("could not write the heartbeat %s: %s: %s", self.key, type(error).__name__, error)
        finally:
            self._lock.release()

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            try:
                self.client.remove_object(self.bucket, self.key)
            except Exception as error:  # noqa: BLE001 - it goes stale by itself
                log.warning("could not delete the heartbeat %s: %s: %s", self.key, type(error).__name__, error)
        if self._thread is not None:
            self._thread.join()


class Checkpointer:
    """Writes each image's result record soon after it is done, in batches (at most one write a second, and at
    the end), so a pod stopped or killed mid-shard loses at most the last second's images; and reads back what
    earlier attempts of the same index finished, so no finished image is made again."""

    def __init__(self, client: Minio, bucket: str, work: str, index: int, retry: RetryPolicy,
                 interval: float = 1.0, on_flush: Callable[[], None] | None = None) -> None:
        self.client, self.bucket, self.work, self.index, self.retry = client, bucket, work, index, retry
        self.interval, self.on_flush = interval, on_flush
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
            if self.on_flush is not None:
                self.on_flush()
        self.flushed_at = time.monotonic()


def _source_identity(key: str, etag: str | None, data: bytes, originals_trusted: bool) -> str | None:
    """The source's content identity for the result cache (cache.content_identity). An original's name is
    checked against the bytes just read (a hash costs milliseconds beside a resize): an entry filed under the
    wrong content would hand another job a wrong image."""
    identity = content_identity(key, etag, originals_trusted=originals_trusted)
    if identity is not None and identity.startswith("sha256-") \
            and hashlib.sha256(data).hexdigest() != identity.removeprefix("sha256-"):
        log.warning("%s does not have the content its name says; its variants are not cached", key,
                    extra={"image": key})
        return None
    return identity


def _write_cache_entries(client: Minio, bucket: str, identity: str, hashes: Mapping[str, str],
                         output_bucket: str, outputs: list[Variant], etags: Mapping[str, str | None]) -> None:
    """The image's variants into its result-cache entry (merged with those other jobs made of the same content:
    two jobs racing lose one's additions, which costs a later reuse, nothing else); a failure is logged and
    costs only a later reuse."""
    made = {hashes[output.target]: CachedVariant(output_bucket, output.path, output.width, output.height,
                                                 output.format, output.bytes, etag.strip('"'))
            for output in outputs if (etag := etags.get(output.target))}  # no ETag: nothing to check a copy by
    if not made:
        return
    key = layout.cache_key(identity)
    try:
        raw = get_json_or_none(client, bucket, key)
        try:
            known = CacheEntry.from_json(raw).variants if raw else {}
        except (KeyError, TypeError, ValueError, AttributeError):  # unreadable: start it again
            known = {}
        put_json(client, bucket, key, CacheEntry({**known, **made}).to_json())
    except Exception as error:  # noqa: BLE001 - the cache never fails an image
        log.warning("could not write the cache entry %s: %s: %s", key, type(error).__name__, error)


def process_shard(
    client: Minio, shard: ShardManifest, limits: ImageLimits, retry: RetryPolicy | None = None, *,
    done: Mapping[str, ImageResult] | None = None, on_result: Callable[[ImageResult], None] | None = None,
    stop: threading.Event | None = None, cache_bucket: str | None = None, workers: int = 0,
) -> list[ImageResult]:
    """Resize every image of a shard and upload its variants; returns one result record per image, in shard order.

    Every core: `workers` images are rendered at once (0: one per CPU of the pod's quota as far as its memory
    limit holds them, or KRESIZE_RENDER_WORKERS; cores.render_workers), in threads, since Pillow releases the
    GIL while it decodes, resamples and encodes. Downloads run ahead of them in their own threads, and each
    image's variants are uploaded while its next one is made, so network and CPU overlap. Memory is bounded by
    the images in flight: at most `workers` + cores.FETCH_AHEAD downloaded and not finished, each with at most
    two variants in memory.

    In flight, images start in shard order but finish in any order: with N workers up to N images are being
    rendered at once, and a quick one may finish before a slower one started earlier. The API shows the first
    unfinished image of a shard as the active one; with N workers it is one of the up to N being rendered.

    Transient S3 errors are retried (`retry`); others, and those that outlast the retry budget, propagate except
    a missing source: they are infrastructure errors and fail the pod (no further image starts, those in flight
    finish first). Nothing about one image does: a bad image, and any unexpected exception while decoding or
    resizing it, is a failed record naming the error (with the variants uploaded before it, if any), whatever
    the other workers are doing.

    Images in `done` (finished by an earlier attempt) are not made again: their records are returned as
    they are. `on_result` sees each new record once, as soon as the image is finished (one call at a time,
    from the worker that finished it). When `stop` is set, no further image starts, the ones in flight
    finish, and the shard returns what it has (the caller checkpoints it and exits: see run_from_env).

    With `cache_bucket` (the platform bucket), each image whose variants are all uploaded gets a result-cache
    entry per target there (layout.cache_key), for later jobs to reuse (the operator's reuse.py).
    """
    retry = retry or RetryPolicy()
    done = done or {}
    images = tuple(image for image in shard.images if image.key not in done)
    try:
        targets = [Target.from_dict(t) for t in shard.targets]
        operations = Operations.from_dict(shard.operations)
        hashes = {raw["name"]: params_hash(raw, shard.operations) for raw in shard.targets} if cache_bucket else {}
    except SpecError as error:
        # The same for every image, and a retried pod would meet it again: fail the images, not the pod.
        log.error("shard %s has targets or operations the resizer cannot use: %s", shard.index, error)
        return [done.get(image.key) or ImageResult.failed(image.key, f"invalid targets or operations: {error}")
                for image in shard.images]
    names = [target.name for target in targets]
    # Originals are named by their content only where the API alone writes them: the platform bucket.
    originals_trusted = shard.source_bucket == cache_bucket
    source_bucket, output_bucket = shard.source_bucket, shard.output_bucket
    records: list[ImageResult] = []
    lock = threading.Lock()  # records and on_result (the Checkpointer) are shared by the render workers

    def finished(result: ImageResult) -> None:
        with lock:
            records.append(result)
            if on_result is not None:
                on_result(result)

    def fetch(image: ImageRef) -> tuple[bytes, str | None] | SourceMissing:
        try:  # S3 errors other than a missing source propagate: infrastructure
            return _download(client, source_bucket, image.key, limits, retry)
        except SourceMissing as error:
            return error

    def upload(key: str, data: bytes, content_type: str) -> str | None:
        return retry.call(f"PUT {key}", _put, client, output_bucket, key, data, content_type)

    def render(image: ImageRef, fetched: tuple[bytes, str | None] | SourceMissing) -> None:
        started = time.perf_counter()
        if isinstance(fetched, SourceMissing):
            finished(ImageResult.failed(image.key, str(fetched)))
            log.info("failed %s: %s", image.key, fetched, extra={"image": image.key})
            return
        data, etag = fetched
        del fetched
        identity = scoped_identity(shard.cache_scope, _source_identity(image.key, etag, data, originals_trusted)
                                   ) if cache_bucket else None
        variants = render_each(data, targets, operations, limits)
        del data  # the pipeline drops the encoded input once decoded
        outputs: list[Variant] = []
        etags: dict[str, str | None] = {}
        failure: str | None = None
        # One variant is uploaded while the next is made: at most two of an image's variants in memory.
        sending: tuple[Variant, Future[str | None]] | None = None

        def sent() -> None:
            nonlocal sending
            if sending is not None:
                output, put = sending
                sending = None
                etags[output.target] = put.result()
                outputs.append(output)

        def finish(background: bool) -> None:
            """The image's last upload, its cache entry and its record."""
            try:
                sent()
                outputs.sort(key=lambda output: names.index(output.target))  # made smallest first
                if failure is None and cache_bucket and identity:
                    _write_cache_entries(client, cache_bucket, identity, hashes, output_bucket, outputs, etags)
                seconds = time.perf_counter() - started
                finished(ImageResult(image.key, "failed", failure, tuple(outputs), seconds) if failure
                         else ImageResult.succeeded(image.key, outputs, seconds))
                if failure is None:
                    log.info("resized %s into %d variants in %.0f ms", image.key, len(outputs), seconds * 1000,
                             extra={"image": image.key})
            except BaseException as error:
                if background:
                    background_errors.append(error)
                raise
            finally:
                if background:
                    finishing.release()

        if background_errors:  # an infrastructure error in an earlier image's uploads: no further image starts
            raise background_errors[0]
        try:
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
                sent()
                key = layout.output_key(shard.output_prefix, image.id, variant.target, variant.extension)
                sending = (Variant(variant.target, key, variant.width, variant.height, variant.format,
                                   len(variant.data)),
                           uploads.submit(upload, key, variant.data, OUTPUTS[variant.format].content_type))
                del variant  # the upload holds it until sent
        except BaseException:
            sent()  # an infrastructure error: the upload under way ends first (an error in it propagates instead)
            raise
        # The last upload is waited for in the background (the worker takes the next image meanwhile) when its
        # bytes are few: the worst-case memory of an image in flight keeps its margin.
        if sending is not None and sending[0].bytes <= BACKGROUND_UPLOAD_MAX:
            finishing.acquire()  # at most `workers` images finishing in the background
            finishers.submit(finish, True)
        else:
            finish(False)  # an infrastructure error in its uploads propagates from here

    workers = workers or render_workers()
    # Images finishing in the background (their last upload, cache entry and record), and what failed there.
    finishing = threading.BoundedSemaphore(workers)
    background_errors: list[BaseException] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="upload") as uploads, \
            ThreadPoolExecutor(workers, thread_name_prefix="finish") as finishers:
        pipelined(images, fetch, render, workers, stop=stop)  # the executors then wait for every image to finish
    if background_errors:
        raise background_errors[0]
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
        workers = render_workers()
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
        heartbeat = Heartbeat(client, settings.bucket, work, index)
        heartbeat.start()  # before the first image: this index is being worked on
        try:
            checkpoints = Checkpointer(client, settings.bucket, work, index, retry, on_flush=heartbeat.beat)
            done = checkpoints.done()
            if done:
                # Finished by an earlier attempt, or reused by the operator from an earlier job (checkpoint 0).
                reused = sum(1 for record in done.values() if record.reused)
                log.info("shard %d: %d of %d images were finished by an earlier attempt%s; not redoing them", index,
                         len(done), len(shard.images), f" ({reused} reused from earlier jobs)" if reused else "")
            log.info("shard %d: rendering %d images at once", index, workers)
            stop = threading.Event()
            # SIGTERM (a scale-down or a deletion): finish the images in flight, checkpoint, exit STOPPED_EXIT_CODE.
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            records = process_shard(client, shard, limits, retry, done=done, on_result=checkpoints.add, stop=stop,
                                    cache_bucket=settings.bucket, workers=workers)
            checkpoints.flush()
            if len(records) < len(shard.images):
                log.info("shard %d stopped by SIGTERM after %d of %d images; checkpointed", index, len(records),
                         len(shard.images))
                return PodEnv.STOPPED_EXIT_CODE
            retry.call("PUT results", put_json, client, settings.bucket, results, results_to_json(records))
        finally:
            heartbeat.stop()  # results written, stopped, or failed: no pod works on this index any more
    except Exception as error:  # noqa: BLE001 - any I/O failure here is an infrastructure error
        log.error("shard %d failed with an infrastructure error, the Job will retry it: %s: %s",
                  index, type(error).__name__, error)
        return 1
    failed = sum(1 for r in records if r.status == "failed")
    log.info("shard %d done: %d images, %d failed", index, len(records), failed)
    return 0
