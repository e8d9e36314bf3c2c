"""Small helpers over the `minio` client (any S3 endpoint works)."""

from __future__ import annotations

import io
import json
from typing import Any

import urllib3
from minio import Minio
from minio.error import S3Error

from .config import S3Settings

NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"})


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
