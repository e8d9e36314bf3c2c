"""The HTTP API: upload images with resize parameters, then follow the ResizeJob it creates."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Annotated, Any

import kubernetes
import urllib3
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kresize_common import layout
from kresize_common.formats import ACCEPTED_NAMES
from kresize_common.kube import kube_client
from kresize_common.s3 import ensure_bucket, make_client
from kresize_common.spec import SpecError
from minio import Minio
from minio.error import S3Error
from prometheus_client import Counter
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from . import jobs
from .auth import ANONYMOUS_ADMIN, TENANT_LABEL, Principal, TokenStore
from .limits import BodyLimit
from .settings import ApiSettings
from .uploads import Inspected, inspect_upload, spec_from_form

log = logging.getLogger("kresize.api")
# Each uploaded file is kept in memory only up to this size, then spilled to a temporary file in /tmp
# (Starlette's default is 1 MiB per file, which with a thousand files would be a gigabyte of memory).
MultiPartParser.spool_max_size = 64 * 1024

UPLOAD_BYTES = Counter("kresize_upload_bytes", "Bytes of uploaded files, accepted or not")
REJECTED_FILES = Counter("kresize_rejected_files", "Uploaded files refused on their own, by reason", ["reason"])

# Errors that mean a backend is unreachable or failing, not that the request is wrong.
BACKEND_ERRORS = (S3Error, urllib3.exceptions.HTTPError, OSError, kubernetes.client.exceptions.ApiException)


def _backend_unavailable(what: str, error: BaseException, *, created_nothing: bool = False) -> HTTPException:
    """503 for a backend that failed; `created_nothing` only where a write was undone (a read changes nothing)."""
    log.warning("%s unavailable: %s: %s", what, type(error).__name__, error)
    outcome = "nothing was created; " if created_nothing else ""
    return HTTPException(503, f"{what} is unavailable, {outcome}try again later ({type(error).__name__})")


bearer = HTTPBearer(auto_error=False, description="an API token; its key in the tokens Secret names the tenant")


def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
           ) -> Principal:
    """Who is calling: the tenant of a valid bearer token (401 otherwise), or everyone with KRESIZE_AUTH=none."""
    tokens: TokenStore | None = request.app.state.tokens
    if tokens is None:
        return ANONYMOUS_ADMIN
    principal = tokens.authenticate(credentials.credentials) if credentials else None
    if principal is None:
        raise HTTPException(401, "a valid API token is required: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


Caller = Annotated[Principal, Depends(caller)]


def _never_sent(error: BaseException) -> bool:
    """Whether the request cannot have reached the server (the connection itself failed)."""
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        error = error.reason or error
    return isinstance(error, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)


def create_app(
    settings: ApiSettings, *, kube: kubernetes.client.ApiClient | None = None, s3: Minio | None = None,
) -> FastAPI:
    app = FastAPI(title="kresize", version="0.1.0", description=(
        "Upload images with resize parameters; kresize runs them as a ResizeJob on Kubernetes."))
    s3 = s3 or make_client(settings.s3)
    public_s3 = make_client(settings.s3, endpoint=settings.s3.public_endpoint)
    resize_jobs = jobs.ResizeJobs(kube or kube_client(), settings.namespace, settings.kube_timeout_seconds)
    bucket = settings.s3.bucket
    if settings.auth == "none":
        tokens = None
        log.warning("KRESIZE_AUTH=none: authentication is OFF and every caller is an admin; "
                    "for local development only")
    else:
        tokens = TokenStore(Path(settings.auth_tokens_dir), settings.admins)
    app.state.tokens = tokens
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    # Requests by route and status, latency histograms; served on a port of their own (__main__), so the
    # API's public port (and any Ingress in front of it) never shows them.
    Instrumentator(excluded_handlers=["/healthz", "/readyz"]).instrument(app)
    # Uploads are spooled to /tmp, not held in memory; this bounds how many are in flight (the others wait,
    # their bodies unread), so memory and /tmp stay within what the chart gives the pod.
    upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)

    def owned_job(name: str, who: Principal) -> dict[str, Any]:
        """The job, if this caller may see it. Someone else's job is a 404, like a missing one, so that
        job names (which can carry meaning) do not leak across tenants."""
        try:
            job = resize_jobs.get(name)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 404:
                raise HTTPException(404, f"no job named {name!r}") from None
            raise _backend_unavailable("the Kubernetes API", error) from None
        except BACKEND_ERRORS as error:
            raise _backend_unavailable("the Kubernetes API", error) from None
        if not who.owns(job["metadata"].get("labels")):
            raise HTTPException(404, f"no job named {name!r}")
        return job

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    def readyz() -> JSONResponse:
        # Open to anyone (probes carry no token), so it names the failing backend and nothing more: the
        # endpoint, the exception and its text go to the log.
        problems = []
        try:
            s3.bucket_exists(bucket)
        except BACKEND_ERRORS as error:
            log.warning("not ready: S3: %s: %s", type(error).__name__, error)
            problems.append("s3")
        try:
            resize_jobs.ping()
        except BACKEND_ERRORS as error:
            log.warning("not ready: Kubernetes API: %s: %s", type(error).__name__, error)
            problems.append("kubernetes")
        if problems:
            return JSONResponse(status_code=503, content={"status": "unavailable", "problems": problems})
        return JSONResponse(content={"status": "ready"})

    @app.post("/v1/jobs", status_code=202, tags=["jobs"])
    async def create_job(request: Request, who: Caller) -> JSONResponse:
        """Multipart form: one or more `files`, plus resize parameters (see `spec_from_form`)."""
        async with upload_slots:
            return await _create_job(request, who)

    async def _create_job(request: Request, who: Principal) -> JSONResponse:
        try:
            form = await request.form(max_files=settings.max_files, max_fields=100, max_part_size=64 * 1024)
        except MultiPartException as error:  # more files or fields than allowed, a field too long
            raise HTTPException(413 if "exceeded" in error.message.lower() else 400, error.message) from None
        try:
            return await _handle_upload(request, who, form)
        finally:
            await form.close()  # the spooled files go at once, not when the form is collected

    async def _handle_upload(request: Request, who: Principal, form: Any) -> JSONResponse:
        uploads = [v for k, v in form.multi_items() if k == "files" and isinstance(v, UploadFile)]
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        if not uploads:
            raise HTTPException(400, "no files: send one or more images in the multipart field 'files'")
        try:
            spec = spec_from_form(fields, settings.limits)
        except SpecError as error:
            raise HTTPException(422, {"message": "invalid resize parameters", "errors": error.errors}) from None
        inspected: list[Inspected] = []
        files: dict[str, UploadFile] = {}  # sha256 -> the spooled upload with that content
        for upload in uploads:
            if upload.size is not None and upload.size > settings.limits.max_bytes:
                raise HTTPException(413, f"{upload.filename}: {upload.size} bytes exceeds the per-file limit "
                                         f"of {settings.limits.max_bytes} bytes (KRESIZE_MAX_FILE_BYTES)")
            result = await run_in_threadpool(inspect_upload, upload.filename, upload.file, settings.limits)
            inspected.append(result)
            UPLOAD_BYTES.inc(result.size)
            if result.error is None:
                files[result.sha256] = upload
            else:
                REJECTED_FILES.labels(result.reason).inc()
        accepted = [f for f in inspected if f.error is None]
        if not accepted:
            rejected = [{"filename": f.filename, "error": f.error} for f in inspected]
            all_empty = all(f.size == 0 for f in inspected)
            raise HTTPException(400 if all_empty else 415, {
                "message": f"no uploaded file is a supported image ({ACCEPTED_NAMES})",
                "files": rejected})
        name = jobs.new_job_name()
        keys = sorted({layout.original_key(f.sha256, f.extension) for f in accepted})
        spec["source"] = {"bucket": bucket, "prefix": layout.UPLOADS_SOURCE_PREFIX, "keys": keys}
        spec["output"] = {"bucket": bucket, "prefix": layout.default_output_prefix(settings.namespace, name)}
        job = await run_in_threadpool(_store_and_create, name, spec, inspected, files, who.tenant)
        body = {
            "name": job["metadata"]["name"],
            "statusUrl": str(request.url_for("get_job", name=name).path),
            "files": [{"filename": f.filename, "accepted": f.error is None, "error": f.error} for f in inspected],
        }
        return JSONResponse(status_code=202, content=body, headers={"Location": body["statusUrl"]})

    def _store_and_create(
        name: str, spec: dict[str, Any], inspected: list[Inspected], files: dict[str, UploadFile], tenant: str,
    ) -> dict[str, Any]:
        """Store the originals, the upload record and the ResizeJob.

        Originals are content-addressed and shared: another request or job may use the same object, so a
        failed request never deletes one (it may have written it a moment after someone else did). It
        writes each again, which also renews its age for the orphan collector (operator/gc.py): an original
        that no upload record names is deleted once it is older than the grace period. What a failed request
        does undo is its own upload record, unless the ResizeJob may exist after all.
        """
        record_key = layout.upload_record_key(settings.namespace, name)
        try:
            ensure_bucket(s3, bucket)
            for f in inspected:
                if f.error is None and f.sha256 in files:
                    upload = files.pop(f.sha256)  # once per content
                    upload.file.seek(0)
                    key = layout.UPLOADS_SOURCE_PREFIX + layout.original_key(f.sha256, f.extension)
                    # One 5 MiB part at a time (minio sends 3 in parallel by default): memory per upload stays
                    # at about one part, whatever the file size.
                    s3.put_object(bucket, key, upload.file, f.size, content_type=f.content_type,
                                  part_size=5 * 1024 * 1024, num_parallel_uploads=1)
            jobs.save_upload_record(s3, bucket, settings.namespace, name, jobs.upload_record(inspected))
        except BACKEND_ERRORS as error:
            _remove_record(record_key)
            raise _backend_unavailable("S3", error, created_nothing=True) from None
        try:
            return resize_jobs.create(name, spec, tenant)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 422:
                _remove_record(record_key)
                raise HTTPException(422, f"the Kubernetes API refused the ResizeJob: {error.body}") from None
            if error.status in (401, 403):
                _remove_record(record_key)
                raise HTTPException(503, "the API is not allowed to create ResizeJobs (check its RBAC)") from None
            return _created_after_all(name, spec, tenant, record_key, error)
        except BACKEND_ERRORS as error:
            if _never_sent(error):  # no connection was made: nothing can have been created
                _remove_record(record_key)
                raise _backend_unavailable("the Kubernetes API", error, created_nothing=True) from None
            # A read timeout or a dropped connection: the apiserver may have committed the create.
            return _created_after_all(name, spec, tenant, record_key, error)

    def _created_after_all(
        name: str, spec: dict[str, Any], tenant: str, record_key: str, error: BaseException,
    ) -> dict[str, Any]:
        """The create failed or its answer was lost: look before rolling back, since the apiserver may have
        committed the ResizeJob. It exists: the request succeeded. It does not: undo and answer 503. Cannot
        tell: keep everything (a job that exists needs its record) and say so."""
        log.warning("creating ResizeJob %s failed (%s: %s); checking whether it exists", name,
                    type(error).__name__, error)
        try:
            job = resize_jobs.get(name)
            if (job["metadata"].get("labels") or {}).get(TENANT_LABEL) == tenant \
                    and job["spec"]["source"].get("keys") == spec["source"]["keys"]:
                return job  # ours: committed, only the answer was lost
            raise HTTPException(503, "the Kubernetes API is unavailable, try again later") from None
        except kubernetes.client.exceptions.ApiException as lookup:
            if lookup.status == 404:
                _remove_record(record_key)
                raise _backend_unavailable("the Kubernetes API", error, created_nothing=True) from None
            unknown: BaseException = lookup
        except BACKEND_ERRORS as lookup:
            unknown = lookup
        log.warning("cannot tell whether ResizeJob %s exists: %s", name, unknown)
        raise HTTPException(503, f"the Kubernetes API did not confirm the job; it may have been created: check "
                                 f"GET /v1/jobs/{name} before submitting again") from None

    def _remove_record(key: str) -> None:
        try:
            s3.remove_object(bucket, key)
        except BACKEND_ERRORS as error:
            log.error("could not remove s3://%s/%s after a failed request: %s", bucket, key, error)

    @app.get("/v1/jobs", tags=["jobs"])
    def list_jobs(who: Caller) -> dict[str, Any]:
        try:
            items = resize_jobs.list(None if who.admin else f"{TENANT_LABEL}={who.tenant}")
        except BACKEND_ERRORS as error:
            raise _backend_unavailable("the Kubernetes API", error) from None
        return {"items": [jobs.summary(j) for j in items]}

    @app.get("/v1/jobs/{name}", tags=["jobs"], name="get_job")
    def get_job(name: str, who: Caller) -> dict[str, Any]:
        job = owned_job(name, who)
        status = job.get("status") or {}
        try:
            files = jobs.file_states(s3, public_s3, job, settings.namespace, bucket, settings.presign_expiry_seconds)
        except BACKEND_ERRORS as error:
            raise _backend_unavailable("S3", error) from None
        return {
            **jobs.summary(job),
            "conditions": status.get("conditions", []),
            "failures": status.get("failures", []),
            "files": files,
        }

    @app.delete("/v1/jobs/{name}", status_code=202, tags=["jobs"])
    def delete_job(name: str, who: Caller) -> dict[str, str]:
        """Delete the job: its Job and pods go with it (owner references)."""
        owned_job(name, who)
        try:
            resize_jobs.delete(name)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status != 404:  # gone meanwhile: what was asked for
                raise _backend_unavailable("the Kubernetes API", error) from None
        except BACKEND_ERRORS as error:
            raise _backend_unavailable("the Kubernetes API", error) from None
        return {"name": name, "status": "deleting"}

    return app
