"""Small helpers over the `minio` client (any S3 endpoint works)."""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import urllib3
from minio import Minio
from minio.commonconfig import CopySource
from minio.deleteobjects import DeleteObject
from minio.error import InvalidResponseError, S3Error, ServerError

from .config import S3Settings, env_int

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"})
# S3 error codes that say "try again later", not "this request is wrong" (AWS and MinIO documentation).
TRANSIENT_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "OperationAborted", "XMinioServerNotInitialized", "XMinioStorageFull",
})
T = TypeVar("T")
log = logging.getLogger("kresize.s3")


def make_client(settings: S3Settings, *, endpoint: str | None = None, timeout: float = 30.0) -> Minio:
    """A client with bounded timeouts and retries, so an unreachable S3 fails fast and clearly.

    The region is fixed so that presigning needs no network round trip.
    """
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=5.0, read=timeout),
        retries=urllib3.Retry(total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        maxsize=16,
    )
    host = endpoint or settings.endpoint
    secure = settings.secure
    if "://" in host:  # public endpoints are given as URLs
        secure = host.startswith("https://")
        host = host.split("://", 1)[1].rstrip("/")
    return Minio(
        host,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        secure=secure,
        region=settings.region,
        http_client=http,
    )


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, S3Error) and error.code in NOT_FOUND_CODES


def is_transient(error: BaseException) -> bool:
    """An S3 failure that may go away by itself: unreachable, timed out, 5xx, throttled."""
    if isinstance(error, S3Error):
        return error.code in TRANSIENT_CODES
    if isinstance(error, ServerError):
        return error.status_code >= 500
    # A non-XML answer (a proxy's 502 page, a half-started server) and every connection-level failure.
    return isinstance(error, InvalidResponseError | urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


@dataclass(frozen=True)
class RetryPolicy:
    """Retry transient S3 failures of one operation with capped exponential backoff, within a time budget.

    A short S3 outage (a restart, a failover) then costs time instead of a pod failure (which would spend
    the Job's per-index retries); an outage longer than the budget still fails, so nothing waits forever.
    """

    budget_seconds: float = 120.0
    first_delay: float = 0.5
    max_delay: float = 10.0

    @classmethod
    def from_env(cls) -> RetryPolicy:
        return cls(budget_seconds=float(env_int("KRESIZE_S3_RETRY_SECONDS", int(cls.budget_seconds))))

    def call(self, what: str, operation: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        deadline = time.monotonic() + self.budget_seconds
        delay = self.first_delay
        while True:
            try:
                return operation(*args, **kwargs)
            except Exception as error:
                if not is_transient(error):
                    raise
                if time.monotonic() + delay > deadline:
                    raise S3Unavailable(f"S3 still failing after retrying {what} for {self.budget_seconds:g}s "
                                        f"(KRESIZE_S3_RETRY_SECONDS): {type(error).__name__}: {error}") from error
                log.warning("S3 %s failed (%s); retrying in %.1fs", what, type(error).__name__, delay)
                time.sleep(delay * random.uniform(0.8, 1.2))  # jitter: pods do not retry in lockstep
                delay = min(delay * 2, self.max_delay)


class S3Unavailable(Exception):
    """Transient S3 failures outlasted the retry budget."""


def ensure_bucket(client: Minio, bucket: str) -> None:
    if not client.bucket_exists(bucket):
        try:
            client.make_bucket(bucket)
        except S3Error as error:  # created concurrently by another component
            if error.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise


def put_bytes(client: Minio, bucket: str, key: str, data: bytes, content_type: str) -> None:
    client.put_object(bucket, key, io.BytesIO(data), len(data), content_type=content_type)


def get_bytes(client: Minio, bucket: str, key: str, *, limit: int | None = None) -> bytes:
    """Read an object; with `limit`, read at most limit + 1 bytes so callers can detect oversize."""
    response = client.get_object(bucket, key)
    try:
        if limit is None:
            return response.read()
        return response.read(limit + 1)
    finally:
        response.close()
        response.release_conn()


def put_json(client: Minio, bucket: str, key: str, value: Any) -> None:
    data = json.dumps(value, separators=(",", ":"), sort_keys=True).encode()
    put_bytes(client, bucket, key, data, "application/json")


def get_json(client: Minio, bucket: str, key: str) -> Any:
    return json.loads(get_bytes(client, bucket, key))


def get_json_or_none(client: Minio, bucket: str, key: str) -> Any | None:
    try:
        return get_json(client, bucket, key)
    except S3Error as error:
        if is_not_found(error):
            return None
        raise


def object_exists(client: Minio, bucket: str, key: str) -> bool:
    try:
        client.stat_object(bucket, key)
    except S3Error as error:
        if is_not_found(error):
            return False
        raise
    return True


def remove_prefix(client: Minio, bucket: str, prefix: str) -> int:
    """Delete every object under `prefix` (batched DeleteObjects); returns how many. Raises if any is left."""
    names = [o.object_name for o in client.list_objects(bucket, prefix=prefix, recursive=True) if o.object_name]
    errors = list(client.remove_objects(bucket, (DeleteObject(name) for name in names)))
    if errors:
        raise RuntimeError(f"could not delete {len(errors)} objects under s3://{bucket}/{prefix}: {errors[0]}")
    return len(names)


def copy_variant(client: Minio, bucket: str, key: str, source: CopySource) -> None:
    """A server-side copy of an object known to be small (a variant: far below S3's 5 GiB single-copy limit).

    `Minio.copy_object` first asks S3 for the source's size (a HEAD) to choose between a copy and a multipart
    compose; for a variant that answer is always "copy", so this sends the one PUT that copy_object sends then.
    (A private method of the pinned minio client; tests/test_reuse.py covers it against a real S3 server.)"""
    client._execute("PUT", bucket, object_name=key, headers=cast(Any, source.gen_copy_headers()))
