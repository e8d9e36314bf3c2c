"""Collect the API's originals that nothing references any more.

Originals (`originals/<sha256>.<ext>`) are content-addressed and shared between requests and jobs, so no
request may delete one when it fails: it might delete what another request wrote a moment before. Instead
this collector deletes an original when (a) no upload record (`uploads/<namespace>/<job>.json`, any
namespace) and no ResizeJob of this namespace names it, and (b) it is older than the grace period
(KRESIZE_ORPHAN_GRACE_SECONDS, default an hour). The API writes an original again on every upload that uses
it, which renews its age, and each candidate's age is read again just before it is deleted, so an original
that a request is using right now is never collected (up to the gap between that read and the delete, a
few milliseconds, which S3 has no portable conditional delete to close).
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable
from typing import Any

from kresize_common import layout
from kresize_common.records import UploadRecord
from kresize_common.s3 import get_json_or_none, is_not_found
from minio import Minio
from minio.error import S3Error

log = logging.getLogger("kresize.operator.gc")
UPLOAD_RECORDS = "uploads/"


def orphans(
    originals: Iterable[tuple[str, datetime.datetime]], referenced: set[str], now: datetime.datetime,
    grace: datetime.timedelta,
) -> list[str]:
    """The keys of originals to collect: unreferenced and older than `grace`."""
    return sorted(key for key, modified in originals if key not in referenced and now - modified > grace)


def referenced_originals(s3: Minio, bucket: str, resizejobs: Iterable[dict[str, Any]]) -> set[str]:
    """Every original an upload record or a ResizeJob names."""
    keys: set[str] = set()
    for obj in s3.list_objects(bucket, prefix=UPLOAD_RECORDS, recursive=True):
        if obj.object_name:
            keys |= UploadRecord.from_json(get_json_or_none(s3, bucket, obj.object_name) or {}).sources
    for job in resizejobs:
        source = (job.get("spec") or {}).get("source") or {}
        prefix = source.get("prefix", "")
        keys.update(layout.source_object_key(prefix, key) for key in source.get("keys") or [])
    return keys


def collect(
    s3: Minio, bucket: str, resizejobs: Iterable[dict[str, Any]], now: datetime.datetime,
    grace: datetime.timedelta,
) -> list[str]:
    """Delete unreferenced originals older than `grace`; returns what was deleted. Blocking I/O."""
    originals = [(o.object_name, o.last_modified or now) for o in  # no date: treat as new, keep
                 s3.list_objects(bucket, prefix=layout.UPLOADS_SOURCE_PREFIX, recursive=True) if o.object_name]
    # Listed after the originals: a record written meanwhile names an original whose age is renewed too.
    referenced = referenced_originals(s3, bucket, resizejobs)
    deleted = delete_unless_written_since(s3, bucket, orphans(originals, referenced, now, grace), now - grace)
    if deleted:
        log.info("collected %d unreferenced originals older than %s", len(deleted), grace)
    return deleted


def release(
    s3: Minio, bucket: str, namespace: str, name: str, originals: list[str], others: Iterable[dict[str, Any]],
    created: datetime.datetime,
) -> list[str]:
    """On deletion of a ResizeJob made from uploads: delete its upload record, then those of its originals that
    nothing else references and that were not written again since the job was created (a later upload of the
    same content is using it). Returns what was deleted. Blocking I/O; idempotent."""
    try:
        s3.remove_object(bucket, layout.upload_record_key(namespace, name))
    except S3Error as error:
        if not is_not_found(error):
            raise
    # An original written again after this job was made is being used by another request.
    return delete_unless_written_since(s3, bucket, sorted(set(originals) - referenced_originals(s3, bucket, others)),
                                       created)


def delete_unless_written_since(s3: Minio, bucket: str, keys: Iterable[str], since: datetime.datetime) -> list[str]:
    """Delete each original whose last write is not after `since` (one written since is in use: the API writes an
    original again on every upload that uses it); returns what was deleted."""
    deleted = []
    for key in keys:
        try:
            if (s3.stat_object(bucket, key).last_modified or since) > since:
                continue
            s3.remove_object(bucket, key)
        except S3Error as error:
            if not is_not_found(error):
                raise
            continue
        deleted.append(key)
    return deleted
