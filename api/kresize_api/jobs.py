"""The API's view of ResizeJobs in Kubernetes and their files in S3 (blocking I/O; call from a thread)."""

from __future__ import annotations

import datetime
import secrets
from typing import Any, cast

import kubernetes
from kresize_common import layout
from kresize_common.records import ImageResult, UploadedFile, UploadRecord, results_from_json
from kresize_common.resizejob import Results
from kresize_common.s3 import get_json, get_json_or_none, put_json
from kresize_common.spec import API_VERSION, GROUP, KIND, PLURAL, VERSION
from minio import Minio

from .auth import TENANT_LABEL
from .uploads import Inspected


def new_job_name() -> str:
    return f"upload-{secrets.token_hex(4)}"



class ResizeJobs:
    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, timeout: float):
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.namespace = namespace
        self.timeout = timeout

    def create(self, name: str, spec: dict[str, Any], tenant: str) -> dict[str, Any]:
        labels = {"app.kubernetes.io/created-by": "kresize-api", TENANT_LABEL: tenant}
        body = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name, "labels": labels}, "spec": spec}
        return cast(dict[str, Any], self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=self.timeout))

    def get(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=self.timeout))

    def list(self, label_selector: str | None = None) -> list[dict[str, Any]]:
        result = cast(dict[str, Any], self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, label_selector=label_selector or "",
            _request_timeout=self.timeout))
        return list(result.get("items", []))

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Background",
            _request_timeout=self.timeout)

    def ping(self) -> None:
        self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, limit=1, _request_timeout=self.timeout)


def upload_record(files: list[Inspected]) -> UploadRecord:
    """What the API remembers of an upload: filename -> source object key, or why it was rejected."""
    return UploadRecord(tuple(
        UploadedFile(filename=f.filename, bytes=f.size, sha256=f.sha256, error=f.error,
                     source=None if f.error else layout.UPLOADS_SOURCE_PREFIX
                     + layout.original_key(f.sha256, f.extension))
        for f in files))


def save_upload_record(s3: Minio, bucket: str, namespace: str, name: str, record: UploadRecord) -> None:
    put_json(s3, bucket, layout.upload_record_key(namespace, name), record.to_json())


def summary(job: dict[str, Any]) -> dict[str, Any]:
    meta, status = job.get("metadata", {}), job.get("status") or {}
    total, succeeded, failed = status.get("total", 0), status.get("succeeded", 0), status.get("failed", 0)
    return {
        "name": meta.get("name"),
        "phase": status.get("phase", "Pending"),
        "progress": {"total": total, "succeeded": succeeded, "failed": failed, "done": succeeded + failed},
        "createdAt": meta.get("creationTimestamp"),
        "completionTime": status.get("completionTime"),
    }


def result_records(s3: Minio, job: dict[str, Any]) -> dict[str, ImageResult]:
    """Per-image result records written so far, by source key."""
    raw = (job.get("status") or {}).get("results")
    if not raw or not raw.get("prefix"):
        return {}
    pointer = Results.from_dict(raw)
    assert pointer.bucket is not None and pointer.prefix is not None
    records: dict[str, ImageResult] = {}
    for obj in s3.list_objects(pointer.bucket, prefix=pointer.prefix, recursive=True):
        if obj.object_name:
            records.update((r.source, r) for r in results_from_json(get_json(s3, pointer.bucket, obj.object_name)))
    return records


def file_states(
    s3: Minio, public_s3: Minio, job: dict[str, Any], namespace: str, bucket: str, expiry: int,
) -> list[dict[str, Any]]:
    """Every file of the job with its state and results; download URLs presigned for the public endpoint."""
    records = result_records(s3, job)
    status = job.get("status") or {}
    output_bucket = (status.get("results") or {}).get("outputBucket", bucket)
    raw = get_json_or_none(s3, bucket, layout.upload_record_key(namespace, job["metadata"]["name"]))
    # A job made with kubectl has no upload record: its files are what the resizer reported.
    entries = UploadRecord.from_json(raw).files if raw else tuple(
        UploadedFile(filename="", bytes=0, sha256="", error=None, source=key) for key in sorted(records))
    finished = status.get("phase") in ("Succeeded", "PartiallyFailed", "Failed")
    files = []
    for entry in entries:
        state: dict[str, Any] = {"filename": entry.filename or None, "source": entry.source}
        record = records.get(entry.source or "")
        if entry.error:
            state.update(status="failed", error=f"rejected at upload: {entry.error}", outputs=[])
        elif record is None:
            state.update(status="failed" if finished else "pending",
                         error="not processed" if finished else None, outputs=[])
        else:
            outputs = [
                {**out.to_json(), "url": public_s3.presigned_get_object(
                    output_bucket, out.path, expires=datetime.timedelta(seconds=expiry))}
                for out in record.outputs
            ]
            state.update(status=record.status, error=record.error, outputs=outputs)
        files.append(state)
    return files
