"""The HTTP API: upload images with resize parameters, then follow the ResizeJob it creates."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any, BinaryIO, cast

import kubernetes
import urllib3
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from kresize_common import layout
from kresize_common.formats import ACCEPTED_NAMES
from kresize_common.kube import kube_client
from kresize_common.s3 import ensure_bucket, make_client
from kresize_common.spec import SpecError
from minio import Minio
from minio.error import S3Error
from prometheus_client import Counter
from prometheus_fastapi_instrumentator import Instrumentator
from sse_starlette import EventSourceResponse
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from . import errors, jobs, models
from .auth import ANONYMOUS_ADMIN, TENANT_LABEL, Principal, TokenStore
from .events import Feeds
from .fetch import FetchError, FetchLimits, fetch
from .files import STATES, FileReader
from .limits import BodyLimit
from .settings import ApiSettings
from .uploads import FILE_FIELD, Inspected, display_name, form_schema, inspect_upload, spec_from_form, unknown_fields
from .watch import JobCache

log = logging.getLogger("kresize.api")
# Each uploaded file is kept in memory only up to this size, then spilled to a temporary file in /tmp
# (Starlette's default is 1 MiB per file, which with a thousand files would be a gigabyte of memory).
MultiPartParser.spool_max_size = 64 * 1024

UPLOAD_BYTES = Counter("kresize_upload_bytes", "Bytes of uploaded files, accepted or not")
REJECTED_FILES = Counter("kresize_rejected_files", "Uploaded files refused on their own, by reason", ["reason"])
FETCH_FAILURES = Counter("kresize_url_fetch_failures", "Image URLs that could not be fetched, by reason", ["reason"])
STATIC = Path(__file__).parent / "static"

# Errors that mean a backend is unreachable or failing, not that the request is wrong.
BACKEND_ERRORS = (S3Error, urllib3.exceptions.HTTPError, OSError, kubernetes.client.exceptions.ApiException)


def _backend_unavailable(what: str, error: BaseException, *, created_nothing: bool = False) -> HTTPException:
    """503 for a backend that failed; `created_nothing` only where a write was undone (a read changes nothing)."""
    log.warning("%s unavailable: %s: %s", what, type(error).__name__, error)
    outcome = "nothing was created; " if created_nothing else ""
    return HTTPException(503, f"{what} is unavailable, {outcome}try again later ({type(error).__name__})")


bearer = HTTPBearer(auto_error=False, description="an API token; its key in the tokens Secret names the tenant")


def _principal(request: Request, token: str | None) -> Principal:
    tokens: TokenStore | None = request.app.state.tokens
    if tokens is None:
        return ANONYMOUS_ADMIN
    principal = tokens.authenticate(token) if token else None
    if principal is None:
        raise HTTPException(401, "a valid API token is required: send 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    return principal


def caller(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
           ) -> Principal:
    """Who is calling: the tenant of a valid bearer token (401 otherwise), or everyone with KRESIZE_AUTH=none."""
    return _principal(request, credentials.credentials if credentials else None)


def watcher(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
            access_token: Annotated[str | None, Query(description=(
                "The token, for browsers' EventSource, which cannot send headers"))] = None) -> Principal:
    """Like `caller`, and the token may come as ?access_token= (the live events route only)."""
    return _principal(request, credentials.credentials if credentials else access_token)


Caller = Annotated[Principal, Depends(caller)]
Watcher = Annotated[Principal, Depends(watcher)]


def _never_sent(error: BaseException) -> bool:
    """Whether the request cannot have reached the server (the connection itself failed)."""
    if isinstance(error, urllib3.exceptions.MaxRetryError):
        error = error.reason or error
    return isinstance(error, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError)


def create_app(
    settings: ApiSettings, *, kube: kubernetes.client.ApiClient | None = None, s3: Minio | None = None,
) -> FastAPI:
    s3 = s3 or make_client(settings.s3)
    public_s3 = make_client(settings.s3, endpoint=settings.s3.public_endpoint)
    kube = kube or kube_client()
    resize_jobs = jobs.ResizeJobs(kube, settings.namespace, settings.kube_timeout_seconds)
    cache = JobCache(kube, settings.namespace, settings.kube_timeout_seconds)
    bucket = settings.s3.bucket
    reader = FileReader(s3, public_s3, bucket, settings.namespace, settings.presign_expiry_seconds)

    def current_job(name: str) -> dict[str, Any] | None:
        """The job from the watch cache, or the apiserver for one it does not hold; None when it is gone."""
        job = cache.get(name)
        if job is not None:
            return job
        try:
            job = resize_jobs.get(name)
        except kubernetes.client.exceptions.ApiException as error:
            if error.status == 404:
                return None
            raise
        cache.remember(job)
        return job

    feeds = Feeds(cache, reader, current_job, jobs.summary, poll_seconds=settings.events_poll_seconds)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        cache.start()
        yield
        cache.stop()

    app = FastAPIOffline(title="kresize", version="0.1.0", lifespan=lifespan, description=(
        "Upload images (or name URLs) with resize parameters; kresize runs them as a ResizeJob on Kubernetes. "
        "Every route under /v1 needs `Authorization: Bearer <token>`. Errors have one shape: "
        "`{\"error\": {\"status\", \"message\", \"details\", \"files\"}}`."))
    errors.install(app)
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
    # (Patterns are searched for in the route: anchored, so the page's "/" does not exclude every route.)
    Instrumentator(excluded_handlers=["^/healthz$", "^/readyz$", "^/$", "^/static"]).instrument(app)
    # Uploads are spooled to /tmp, not held in memory; this bounds how many are in flight (the others wait,
    # their bodies unread), so memory and /tmp stay within what the chart gives the pod.
    upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)
    fetch_limits = FetchLimits(
        max_bytes=settings.limits.max_bytes, timeout_seconds=settings.url_timeout_seconds,
        max_redirects=settings.url_max_redirects,
        allowed_hosts=tuple(h.strip() for h in settings.url_allowed_hosts.split(",") if h.strip()))

    def owned_job(name: str, who: Principal) -> dict[str, Any]:
        """The job, if this caller may see it. Someone else's job is a 404, like a missing one, so that
        job names (which can carry meaning) do not leak across tenants."""
        try:
            job = current_job(name)
        except BACKEND_ERRORS as error:
            raise _backend_unavailable("the Kubernetes API", error) from None
        if job is None or not who.owns(job["metadata"].get("labels")):
            raise HTTPException(404, f"no job named {name!r}")
        return job

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    # The page runs with a token in reach: it may load scripts and call only its own origin, and show images from
    # S3's public endpoint (where the presigned download links point).
    s3_origin = f"{'https' if public_s3._base_url.is_https else 'http'}://{public_s3._base_url.host}"
    page_policy = (f"default-src 'self'; img-src 'self' data: blob: {s3_origin}; connect-src 'self'; "
                   "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={
            "Cache-Control": "no-cache", "Content-Security-Policy": page_policy,
            "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer"})

    @app.get("/healthz", tags=["health"], response_model=models.Health)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], response_model=models.Health)
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

    @app.get("/v1/me", tags=["auth"], response_model=models.Me, responses=errors.ERROR_RESPONSES)
    def me(who: Caller) -> dict[str, Any]:
        """Who the token belongs to: clients check a token with this."""
        return {"tenant": who.tenant, "admin": who.admin}

    @app.post("/v1/jobs", status_code=202, tags=["jobs"], response_model=models.Submitted,
              responses=errors.ERROR_RESPONSES, openapi_extra={"requestBody": form_schema()})
    async def create_job(request: Request, who: Caller) -> JSONResponse:
        """Upload images (multipart `files`) or name them (`urls`, multipart or JSON), with the resize
        parameters: `targets` as JSON, or the fields of one target. Answers 202 with the job's name and links;
        files refused on their own (not an image, too many pixels, a URL that cannot be fetched) are listed
        and count as failed in the job, which goes ahead with the others."""
        async with upload_slots:
            return await _create_job(request, who)

    async def _create_job(request: Request, who: Principal) -> JSONResponse:
        if (request.headers.get("content-type") or "").split(";")[0].strip() == "application/json":
            return await _handle_json(request, who)
        try:
            form = await request.form(max_files=settings.max_files, max_fields=settings.max_files + 100,
                                      max_part_size=64 * 1024)
        except MultiPartException as error:  # more files or fields than allowed, a field too long
            raise HTTPException(413 if "exceeded" in error.message.lower() else 400, error.message) from None
        try:
            uploads = [v for k, v in form.multi_items() if k == FILE_FIELD and isinstance(v, UploadFile)]
            fields = {k: v for k, v in form.multi_items() if isinstance(v, str) and k != "urls"}
            urls = [line.strip() for k, v in form.multi_items() if k == "urls" and isinstance(v, str)
                    for line in v.splitlines() if line.strip()]
            if problems := unknown_fields({k for k, _ in form.multi_items()}):
                raise HTTPException(422, {"message": "unknown form fields", "errors": problems})
            return await _handle_upload(request, who, uploads, fields, urls)
        finally:
            await form.close()  # the spooled files go at once, not when the form is collected

    async def _handle_json(request: Request, who: Principal) -> JSONResponse:
        try:
            body = await request.json()
        except ValueError as error:
            raise HTTPException(400, f"the body is not valid JSON: {error}") from None
        if not isinstance(body, dict):
            raise HTTPException(422, "the body must be a JSON object with `urls` and the resize parameters")
        if problems := unknown_fields(set(body)) + [f"{k}: files cannot be sent in JSON; use multipart"
                                                    for k in body if k == FILE_FIELD]:
            raise HTTPException(422, {"message": "unknown fields", "errors": problems})
        urls = body.pop("urls", None) or []
        if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
            raise HTTPException(422, {"message": "invalid request", "errors": ["urls: a list of URLs is expected"]})
        fields = {k: json.dumps(v) if k == "targets" else str(v).lower() if isinstance(v, bool) else str(v)
                  for k, v in body.items() if v is not None}
        return await _handle_upload(request, who, [], fields, urls)

    async def _fetch_urls(urls: list[str]) -> list[UploadFile | str]:
        """Each URL as a spooled file, or why it could not be fetched. A few at a time."""
        slots = asyncio.Semaphore(4)

        def one(url: str) -> UploadFile | str:
            spool = tempfile.SpooledTemporaryFile(max_size=64 * 1024)  # noqa: SIM115 (closed with the form)
            try:
                fetched = fetch(url, cast(BinaryIO, spool), fetch_limits)
            except FetchError as error:
                spool.close()
                FETCH_FAILURES.labels(error.reason).inc()
                return str(error)
            spool.seek(0)
            return UploadFile(cast(BinaryIO, spool), size=fetched.size, filename=fetched.filename)

        async def bounded(url: str) -> UploadFile | str:
            async with slots:
                return await run_in_threadpool(one, url)
        return list(await asyncio.gather(*(bounded(u) for u in urls)))

    async def _handle_upload(request: Request, who: Principal, uploads: list[UploadFile], fields: dict[str, str],
                             urls: list[str]) -> JSONResponse:
        if not uploads and not urls:
            raise HTTPException(400, "no files: send one or more images in the multipart field 'files', "
                                     "or their URLs in 'urls'")
        if len(uploads) + len(urls) > settings.max_files:
            raise HTTPException(413, f"at most {settings.max_files} files and URLs in one job (KRESIZE_MAX_FILES)")
        try:
            spec = spec_from_form(fields, settings.limits)
        except SpecError as error:
            raise HTTPException(422, {"message": "invalid resize parameters", "errors": error.errors}) from None
        inspected: list[Inspected] = []
        files: dict[str, UploadFile] = {}  # sha256 -> the spooled upload with that content
        fetched = await _fetch_urls(urls) if urls else []
        try:
            for url, got in zip(urls, fetched, strict=True):
                if isinstance(got, str):
                    inspected.append(Inspected(display_name(url.split("?", 1)[0]), 0, "", error=got, reason="url"))
                else:
                    uploads.append(got)
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
            verdicts = [{"filename": f.filename, "accepted": f.error is None, "error": f.error} for f in inspected]
            if not accepted:
                all_empty = all(f.size == 0 and f.reason != "url" for f in inspected)
                raise HTTPException(400 if all_empty else 415, {
                    "message": f"no file is a supported image ({ACCEPTED_NAMES})",
                    "errors": [f"{f.filename}: {f.error}" for f in inspected], "files": verdicts})
            name = jobs.new_job_name()
            keys = sorted({layout.original_key(f.sha256, f.extension) for f in accepted})
            spec["source"] = {"bucket": bucket, "prefix": layout.UPLOADS_SOURCE_PREFIX, "keys": keys}
            rejected = [{"filename": f.filename[:255], "reason": (f.error or "")[:512]}
                        for f in inspected if f.error is not None]
            if rejected:
                spec["source"]["rejected"] = rejected
            spec["output"] = {"bucket": bucket, "prefix": layout.default_output_prefix(settings.namespace, name)}
            job = await run_in_threadpool(_store_and_create, name, spec, inspected, files, who.tenant)
        finally:
            for got in fetched:
                if not isinstance(got, str):
                    await got.close()
        cache.remember(job)
        path = str(request.url_for("get_job", name=name).path)
        body = {"name": job["metadata"]["name"], "statusUrl": path, "filesUrl": f"{path}/files",
                "eventsUrl": f"{path}/events", "files": verdicts}
        return JSONResponse(status_code=202, content=body, headers={"Location": path})

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

    @app.get("/v1/jobs", tags=["jobs"], response_model=models.JobList, responses=errors.ERROR_RESPONSES)
    def list_jobs(who: Caller) -> dict[str, Any]:
        """Your jobs, newest first (an admin sees every tenant's)."""
        items = cache.items()
        if items is None:  # the watch is not in sync: ask the apiserver
            try:
                items = resize_jobs.list(None if who.admin else f"{TENANT_LABEL}={who.tenant}")
            except BACKEND_ERRORS as error:
                raise _backend_unavailable("the Kubernetes API", error) from None
        mine = [j for j in items if who.owns(j["metadata"].get("labels"))]
        mine.sort(key=lambda j: (j["metadata"].get("creationTimestamp") or "", j["metadata"]["name"]), reverse=True)
        return {"items": [jobs.summary(j) for j in mine]}

    @app.get("/v1/jobs/{name}", tags=["jobs"], name="get_job", response_model=models.JobDetail,
             responses=errors.ERROR_RESPONSES)
    def get_job(name: str, who: Caller) -> dict[str, Any]:
        """The job's summary, from the ResizeJob alone; its files are at /v1/jobs/{name}/files."""
        job = owned_job(name, who)
        status = job.get("status") or {}
        return {**jobs.summary(job), "conditions": status.get("conditions", []),
                "failures": status.get("failures", [])}

    @app.get("/v1/jobs/{name}/files", tags=["jobs"], response_model=models.FilePage,
             responses=errors.ERROR_RESPONSES)
    def list_files(
        name: str, who: Caller,
        limit: Annotated[int, Query(ge=1, le=1000, description="Files per page")] = 100,
        cursor: Annotated[str | None, Query(description="The `next` of the previous page")] = None,
        state: Annotated[str | None, Query(description=f"Only files in this state: {', '.join(STATES)}",
                                           pattern="^(" + "|".join(STATES) + ")$")] = None,
    ) -> Response:
        """The job's files a page at a time, each with its state, error and outputs (download links presigned
        for this page only)."""
        job = owned_job(name, who)
        try:
            body = reader.page_json(job, cursor, limit, state)
        except BACKEND_ERRORS as error:
            raise _backend_unavailable("S3", error) from None
        return Response(body, media_type="application/json")  # built as models.FilePage; sent as it is

    @app.get("/v1/jobs/{name}/events", tags=["jobs"], responses={
        **errors.ERROR_RESPONSES, 200: {"description": "Server-Sent Events", "content": {"text/event-stream": {}}}})
    def job_events(
        name: str, who: Watcher,
        last_event_id: Annotated[str | None, Header(description="Resume after this event")] = None,
    ) -> EventSourceResponse:
        """Live progress as Server-Sent Events: `progress` (the summary, as it changes), `file` (each file as
        it finishes, by `index`), `end` (the terminal summary, then the stream closes). Every event has an id;
        reconnect with `Last-Event-ID` to resume. A comment every few seconds keeps proxies from closing it."""
        owned_job(name, who)
        return EventSourceResponse(feeds.stream(name, last_event_id), ping=settings.events_ping_seconds,
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.delete("/v1/jobs/{name}", status_code=202, tags=["jobs"], response_model=models.Deleting,
                responses=errors.ERROR_RESPONSES)
    def delete_job(name: str, who: Caller) -> dict[str, str]:
        """Cancel and delete the job: its pods stop, its work files go, its outputs stay unless its
        spec.cleanup says otherwise."""
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
