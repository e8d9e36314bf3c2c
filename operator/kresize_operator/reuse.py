"""Result reuse: an image resized before with the same target parameters is not resized again.

At planning (storage.ensure_plan), each image whose content has an identity (cache.content_identity) has the
result-cache entry of every target looked up (layout.cache_key: written by the resizer once it has uploaded an
image's variants). When all are there, each variant is copied server-side to this job's own output key, on the
condition that it still has the ETag its entry records, and the image gets a `reused` record instead of being
resized. Anything else (an entry missing, a variant deleted or overwritten since, an unreadable entry, any error
S3 answers) is a miss: the image is processed as usual. A variant copied before a later miss of the same image
is harmless: the resizer overwrites it.

Blocking I/O.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kresize_common import layout
from kresize_common.cache import params_hash
from kresize_common.records import CachedVariant, CacheEntry, ImageRef, ImageResult, Variant
from kresize_common.s3 import copy_variant, get_json_or_none, is_transient
from kresize_common.spec import SpecError
from minio import Minio
from minio.commonconfig import CopySource
from minio.error import S3Error

log = logging.getLogger("kresize.operator.reuse")

LOOKUP_THREADS = 16  # the S3 client's connection pool holds 16


class _Miss(Exception):
    """This image's variants cannot all be reused."""


def reuse_variants(
    client: Minio, cache_bucket: str, images: Sequence[tuple[ImageRef, str | None]],
    targets: Sequence[Mapping[str, Any]], operations: Mapping[str, Any] | None, output_bucket: str,
    output_prefix: str, *, threads: int = LOOKUP_THREADS,
) -> dict[str, ImageResult]:
    """Copy the cached variants of every image (with its content identity, None: no reuse) whose targets are all
    cached to this job's output keys; their `reused` records, by source key.

    A miss costs one GET (the first target's entry); a hit one GET and one server-side copy per target.
    Images are looked up `threads` at a time. Errors S3
    answers make a miss; failing to reach S3 at all propagates (planning fails and is retried) rather than
    waiting out every image's timeouts."""
    candidates = [(image, identity) for image, identity in images if identity]
    if not candidates:
        return {}
    try:
        hashes = [(str(raw["name"]), params_hash(raw, operations)) for raw in targets]
    except SpecError:
        return {}  # the resizer fails these images: nothing of them is cached
    started = time.perf_counter()
    unreachable = threading.Event()

    def one(candidate: tuple[ImageRef, str | None]) -> ImageResult | None:
        image, identity = candidate
        if unreachable.is_set():
            return None
        assert identity is not None
        try:
            return _reuse_image(client, cache_bucket, image, identity, hashes, output_bucket, output_prefix)
        except _Miss:
            return None
        except S3Error as error:
            log.info("not reusing the variants of %s: %s", image.key, error.code)
            return None
        except Exception as error:
            if is_transient(error):  # S3 unreachable, or answering 5xx: the other lookups stop at once
                unreachable.set()
                raise
            log.warning("not reusing the variants of %s: %s: %s", image.key, type(error).__name__, error)
            return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = [result for result in pool.map(one, candidates) if result is not None]  # the first error raises
    if found:
        log.info("reused the variants of %d of %d images in %.2f s", len(found), len(images),
                 time.perf_counter() - started)
    return {result.source: result for result in found}


def _reuse_image(
    client: Minio, cache_bucket: str, image: ImageRef, identity: str, hashes: Sequence[tuple[str, str]],
    output_bucket: str, output_prefix: str,
) -> ImageResult:
    raw = get_json_or_none(client, cache_bucket, layout.cache_key(identity))
    if raw is None:
        raise _Miss
    try:
        known = CacheEntry.from_json(raw).variants
    except (KeyError, TypeError, ValueError, AttributeError):
        log.warning("unreadable cache entry %s; ignored", layout.cache_key(identity))
        raise _Miss from None
    entries: list[tuple[str, CachedVariant]] = []
    for name, digest in hashes:  # every target's first: no copy for an image that will be resized anyway
        if digest not in known:
            raise _Miss
        entries.append((name, known[digest]))
    outputs: list[Variant] = []
    for name, entry in entries:
        extension = layout.FORMAT_EXTENSIONS.get(entry.format)
        if extension is None:
            raise _Miss
        key = layout.output_key(output_prefix, image.id, name, extension)
        if (entry.bucket, entry.path) == (output_bucket, key):
            # Already where this job writes it (a job with the output prefix of the one that made it): S3 refuses
            # a copy onto itself, so check that it is still that variant.
            if (client.stat_object(output_bucket, key).etag or "").strip('"') != entry.etag:
                raise _Miss
        else:
            # S3 answers PreconditionFailed when the variant changed since, NoSuchKey when it is gone: misses.
            copy_variant(client, output_bucket, key, CopySource(entry.bucket, entry.path, match_etag=entry.etag))
        outputs.append(Variant(name, key, entry.width, entry.height, entry.format, entry.bytes))
    return ImageResult(image.key, "succeeded", outputs=tuple(outputs), reused=True)
