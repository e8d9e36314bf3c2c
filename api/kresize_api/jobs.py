"""The API's view of ResizeJobs in Kubernetes and their files in S3 (blocking I/O; call from a thread)."""

from __future__ import annotations

import secrets
from typing import Any, cast

import kubernetes
from kresize_common import layout
from kresize_common.records import UploadedFile, UploadRecord
from kresize_common.s3 import put_json
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
    """What every client shows of a job, from the ResizeJob alone (never its files): its status counts the files
    refused at upload as failed, so this, `kubectl get rj` and the CLI agree."""
    meta, status = job.get("metadata", {}), job.get("status") or {}
    total, succeeded, failed = status.get("total", 0), status.get("succeeded", 0), status.get("failed", 0)
    done = _done(status.get("progress"), succeeded + failed)
    return {
        "name": meta.get("name"),
        "phase": status.get("phase", "Pending"),
        "progress": {"total": total, "succeeded": succeeded, "failed": failed, "reused": status.get("reused", 0),
                     "done": done},
        "imagesPerSecond": status.get("imagesPerSecond"),
        "estimatedCompletionTime": status.get("estimatedCompletionTime"),
        "queuePosition": status.get("queuePosition"),
        "targets": [t.get("name") for t in (job.get("spec") or {}).get("targets") or []],
        "createdAt": meta.get("creationTimestamp"),
        "completionTime": status.get("completionTime"),
    }


def _done(progress: str | None, counted: int) -> int:
    """Images done: the operator's `done/total` (it counts checkpointed images, image by image), never less than
    what finished shards counted."""
    head = (progress or "").split("/", 1)[0]
    return max(counted, int(head)) if head.isdigit() else counted
