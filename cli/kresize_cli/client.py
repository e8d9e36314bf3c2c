"""A small typed client of the kresize HTTP API v1 (no display, no exit codes: that is main.py's job).

Every failure, whether the API answered 4xx/5xx or could not be reached at all, is one `ApiError`, so a
caller has a single thing to catch.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, NotRequired, TypedDict, cast
from urllib.parse import quote

import httpx

Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "PartiallyFailed", "Failed"]
FileStateName = Literal["waiting", "active", "succeeded", "failed"]
TERMINAL_PHASES = frozenset({"Succeeded", "PartiallyFailed", "Failed"})


class Progress(TypedDict):
    total: int
    succeeded: int
    failed: int
    done: int
    reused: NotRequired[int]


class JobSummary(TypedDict):
    name: str
    phase: Phase
    progress: Progress
    createdAt: str
    completionTime: str | None
    imagesPerSecond: NotRequired[float | None]
    estimatedCompletionTime: NotRequired[str | None]
    queuePosition: NotRequired[int | None]
    targets: NotRequired[list[str]]


class Failure(TypedDict):
    source: str
    reason: str


class JobDetail(JobSummary):
    conditions: NotRequired[list[dict[str, Any]]]
    failures: NotRequired[list[Failure]]


class Output(TypedDict):
    target: str
    width: int
    height: int
    format: str
    bytes: int
    url: str


class FileState(TypedDict):
    index: int
    filename: str | None
    source: str | None
    state: FileStateName
    error: str | None
    reused: bool
    outputs: list[Output]


class UploadedFile(TypedDict):
    filename: str
    accepted: bool
    error: str | None


class Submitted(TypedDict):
    name: str
    statusUrl: str
    files: list[UploadedFile]
    filesUrl: NotRequired[str]
    eventsUrl: NotRequired[str]


class ApiError(Exception):
    """An answer outside 2xx in the contract's error shape, or no answer at all (`status` 0)."""

    def __init__(self, status: int, message: str, details: Sequence[str] = (),
                 files: list[UploadedFile] | None = None):
        super().__init__(f"{status}: {message}" if status else message)
        self.status = status
        self.message = message
        self.details = list(details)
        self.files = files  # per-file verdicts, when an upload was refused as a whole

    def to_json(self) -> dict[str, Any]:
        return {"error": {"status": self.status, "message": self.message, "details": self.details,
                          "files": self.files}}


def error_from_response(response: httpx.Response) -> ApiError:
    """The contract's `{"error": {...}}`; FastAPI's own `{"detail": ...}` and plain text are understood too,
    so that an answer from something in front of the API (a proxy, an older server) still reads well."""
    try:
        body = response.json()
    except ValueError:
        body = None
    status = response.status_code
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        return ApiError(status, str(error.get("message") or response.reason_phrase),
                        [str(d) for d in error.get("details") or []], _files(error.get("files")))
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, dict):
            details = detail.get("details") or detail.get("errors") or []
            return ApiError(status, str(detail.get("message") or response.reason_phrase),
                            [str(d) for d in details], _files(detail.get("files")))
        if isinstance(detail, list):  # request validation errors
            return ApiError(status, "invalid request", [str(d.get("msg", d)) if isinstance(d, dict) else str(d)
                                                        for d in detail])
        return ApiError(status, str(detail))
    return ApiError(status, " ".join(response.text.split())[:300] or response.reason_phrase)


def _files(raw: Any) -> list[UploadedFile] | None:
    if not isinstance(raw, list):
        return None
    return [{"filename": str(f.get("filename")), "accepted": bool(f.get("accepted", False)),
             "error": None if f.get("error") is None else str(f["error"])} for f in raw if isinstance(f, dict)]


@dataclass(frozen=True)
class SseEvent:
    event: str
    data: str
    id: str | None = None  # the last event ID seen so far, as a reconnect sends it back

    def json(self) -> Any:
        return json.loads(self.data)


def parse_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Server-Sent Events from the lines of a stream, as the WHATWG spec dispatches them: a blank line ends
    an event, `:` lines are comments (heartbeats), data lines join with newlines, an event without data is
    dropped, and an unfinished event at the end of the stream is dropped too."""
    event, last_id = "", None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data:
                yield SseEvent(event or "message", "\n".join(data), last_id)
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
        elif name == "id" and "\0" not in value:
            last_id = value
        # `retry` and unknown fields are ignored


class _LazyFile:
    """A file opened at its first read and closed at its end: a folder of thousands of images is uploaded
    without thousands of open descriptors, and still streamed from disk rather than read into memory."""

    def __init__(self, path: Path):
        self.path = path
        self.size = path.stat().st_size
        self._file: io.BufferedReader | None = None
        self._position = 0

    def tell(self) -> int:
        return self._file.tell() if self._file else self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if self._file:
            return self._file.seek(offset, whence)
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.size}[whence]
        self._position = base + offset
        return self._position

    def read(self, size: int = -1) -> bytes:
        if self._file is None:
            self._file = self.path.open("rb")
            self._file.seek(self._position)
        chunk = self._file.read(size)
        if not chunk:
            self.close()
        return chunk

    def close(self) -> None:
        if self._file:
            self._position = self._file.tell()
            self._file.close()
            self._file = None


class KresizeClient:
    """The API v1 over one HTTP connection pool. Job names go into URLs percent-encoded."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 30.0,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers["User-Agent"] = "kresize-cli/0.1.0"
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> KresizeClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error
        if not response.is_success:
            raise error_from_response(response)
        try:
            return response.json()
        except ValueError:
            raise ApiError(response.status_code, f"{method} {path}: the answer is not JSON") from None

    def _unreachable(self, error: httpx.HTTPError) -> ApiError:
        return ApiError(0, f"cannot talk to the API at {self.base_url}: {type(error).__name__}: {error}")

    @staticmethod
    def _job_path(name: str) -> str:
        return f"/v1/jobs/{quote(name, safe='')}"

    def me(self) -> dict[str, Any]:
        return cast(dict[str, Any], self._request("GET", "/v1/me"))

    def submit(self, paths: Sequence[Path] = (), *, urls: Sequence[str] = (),
               targets: list[dict[str, Any]] | None = None, target: Mapping[str, Any] | None = None,
               options: Mapping[str, Any] | None = None, timeout: float = 600.0) -> Submitted:
        """POST /v1/jobs: files as multipart streamed from disk (JSON when there are only URLs).
        `targets` (a list) or `target` (the fields of one target); `options` are the other fields."""
        fields: dict[str, Any] = {**(target or {}), **(options or {})}
        if targets is not None:
            fields["targets"] = targets
        fields = {k: v for k, v in fields.items() if v is not None}
        slow = httpx.Timeout(timeout, connect=10.0)
        if not paths:
            return cast(Submitted, self._request("POST", "/v1/jobs", json={**fields, "urls": list(urls)},
                                                 timeout=slow))
        form: dict[str, str | list[str]] = {k: _form_value(v) for k, v in fields.items()}
        if urls:
            form["urls"] = list(urls)  # a list repeats the field
        lazy = [_LazyFile(p) for p in paths]
        files = [("files", (p.name, f, "application/octet-stream")) for p, f in zip(paths, lazy, strict=True)]
        try:
            return cast(Submitted, self._request("POST", "/v1/jobs", data=form, files=files, timeout=slow))
        finally:
            for f in lazy:
                f.close()

    def jobs(self) -> list[JobSummary]:
        return cast(list[JobSummary], self._request("GET", "/v1/jobs")["items"])

    def job(self, name: str) -> JobDetail:
        return cast(JobDetail, self._request("GET", self._job_path(name)))

    def files(self, name: str, *, state: FileStateName | None = None, limit: int = 100) -> Iterator[FileState]:
        """Every file of the job, page after page, following `next` until it is null."""
        params: dict[str, str | int] = {"limit": limit}
        if state:
            params["state"] = state
        seen: set[str] = set()
        while True:
            page = self._request("GET", f"{self._job_path(name)}/files", params=params)
            yield from cast(list[FileState], page["items"])
            cursor = page.get("next")
            if not cursor:
                return
            if cursor in seen:
                raise ApiError(0, f"the API returned the cursor {cursor!r} twice: stopping instead of looping")
            seen.add(cursor)
            params["cursor"] = cursor

    def events(self, name: str, *, last_event_id: str | None = None, read_timeout: float = 60.0,
               ) -> Generator[SseEvent, None, None]:
        """The job's Server-Sent Events until the server closes the stream (close() it to stop early).
        Heartbeats keep a healthy stream inside `read_timeout`; a silent one raises ApiError like any broken
        connection."""
        headers = {"Accept": "text/event-stream"}
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        try:
            with self._http.stream("GET", f"{self._job_path(name)}/events", headers=headers,
                                   timeout=httpx.Timeout(read_timeout, connect=10.0)) as response:
                if not response.is_success:
                    response.read()
                    raise error_from_response(response)
                yield from parse_sse(response.iter_lines())
        except httpx.HTTPError as error:
            raise self._unreachable(error) from error

    def delete(self, name: str) -> dict[str, Any]:
        return cast(dict[str, Any], self._request("DELETE", self._job_path(name)))


def _form_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)
