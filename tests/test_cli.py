"""The `kresize` command-line client (cli/).

Three layers: its pure parts called directly (SSE parsing, exit codes, download paths); the real console
script against a small fake API on loopback, for what the real API cannot be made to do (hostile file names,
a live event stream ending in PartiallyFailed); and the real console script against the whole platform
(marked slow).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from harness.procs import wait_for
from kresize_cli import main
from kresize_cli.client import ApiError, KresizeClient, SseEvent, parse_sse
from kresize_cli.jobs import (
    EXIT_API_ERROR,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    DownloadPlanner,
    JobTracker,
    UnsafePath,
    exit_code_for,
    printable,
    safe_component,
)
from kresize_cli.main import expand_paths
from PIL import Image

KRESIZE = Path(sys.executable).parent / "kresize"


def run_cli(*args: str, api_url: str, token: str | None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The installed console script, configured through the environment as a user's shell would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRESIZE_")}
    env.update(KRESIZE_API_URL=api_url, COLUMNS="200")
    if token is not None:
        env["KRESIZE_TOKEN"] = token
    return subprocess.run([str(KRESIZE), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          check=False)


def summary(phase: str, total: int = 2, succeeded: int = 2, failed: int = 0, name: str = "job-1") -> dict:
    return {"name": name, "phase": phase, "createdAt": "2026-01-01T00:00:00Z", "completionTime": None,
            "progress": {"total": total, "succeeded": succeeded, "failed": failed, "reused": 0,
                         "done": succeeded + failed},
            "imagesPerSecond": None, "estimatedCompletionTime": None, "queuePosition": None, "targets": ["thumb"]}


# --- pure parts ----------------------------------------------------------------------------------------------


def test_sse_parsing_follows_the_spec():
    stream = (": ping\n"
              "id: 1\nevent: progress\ndata: {\"a\": 1}\n\n"
              ": ping\n\n"  # a comment alone dispatches nothing
              "event: file\r\ndata: line one\r\ndata:line two\r\n\r\n"  # CRLF, no space after the colon
              "event: nodata\n\n"  # no data: dropped
              "data: plain\n\n"  # no event name: "message"; keeps the last id
              "id: 7\nevent: end\ndata: {}\n"  # unfinished at the end of the stream: dropped
              ).splitlines(keepends=True)
    assert list(parse_sse(stream)) == [
        SseEvent("progress", '{"a": 1}', "1"),
        SseEvent("file", "line one\nline two", "1"),
        SseEvent("message", "plain", "1"),
    ]
    (end,) = parse_sse(["event: end", "data: {\"phase\": \"Failed\"}", ""])
    assert end.json() == {"phase": "Failed"}


def test_tracker_applies_events_idempotently_and_finishes_at_the_end():
    tracker = JobTracker("job-1")
    file = {"index": 3, "filename": "a.jpg", "source": "k", "state": "failed", "error": "broken", "reused": False,
            "outputs": []}
    assert tracker.apply(SseEvent("progress", json.dumps(summary("Running", succeeded=0)), "1")) is None
    assert tracker.apply(SseEvent("file", json.dumps(file), "2")) == file
    assert tracker.apply(SseEvent("file", json.dumps(file), "2")) is None  # replayed after a reconnect
    assert not tracker.finished and list(tracker.files) == [3]
    tracker.apply(SseEvent("end", json.dumps(summary("PartiallyFailed", succeeded=1, failed=1)), "3"))
    assert tracker.finished and tracker.last_event_id == "3"


def test_tracker_measures_images_per_second_unless_the_server_says():
    tracker = JobTracker("job-1")
    tracker.update(summary("Running", total=100, succeeded=0), now=10.0)
    tracker.update(summary("Running", total=100, succeeded=20), now=14.0)
    assert tracker.images_per_second == 5.0
    tracker.update({**summary("Running", total=100, succeeded=30), "imagesPerSecond": 2.5}, now=15.0)
    assert tracker.images_per_second == 2.5


@pytest.mark.parametrize(("phase", "failed", "rejected", "code"), [
    ("Succeeded", 0, 0, EXIT_OK),
    ("Running", 0, 0, EXIT_OK),  # not finished, nothing failed yet
    ("Running", 1, 0, EXIT_OK),
    (None, 0, 0, EXIT_OK),  # submitted without --wait
    (None, 0, 1, EXIT_PARTIAL),  # ... with a file rejected at upload
    ("Succeeded", 0, 1, EXIT_PARTIAL),
    ("PartiallyFailed", 1, 0, EXIT_PARTIAL),
    ("Succeeded", 1, 0, EXIT_PARTIAL),  # a terminal job with failures is never 0
    ("Failed", 2, 0, EXIT_FAILED),
    ("Failed", 2, 1, EXIT_FAILED),
])
def test_exit_code_from_a_summary(phase, failed, rejected, code):
    job = None if phase is None else summary(phase, succeeded=2 - failed, failed=failed)
    assert exit_code_for(job, rejected) == code


def test_exit_codes_are_the_documented_ones():
    assert (EXIT_OK, EXIT_API_ERROR, EXIT_USAGE, EXIT_PARTIAL, EXIT_FAILED) == (0, 1, 2, 3, 4)
    for code in (0, 1, 2, 3, 4):
        assert f"\n  {code}  " in main.__doc__


@pytest.mark.parametrize("raw", [
    "../../etc/passwd", "a/../../b", "/etc/passwd", "..", ".", "../", "..\\..\\windows\\win.ini",
    "C:\\Windows\\system.ini", "\x1b[31mred\x00", "", None, "...", "a/..", " .. ", "con:x?*|<>\"", "x" * 500,
])
def test_safe_component_is_one_harmless_name(raw):
    name = safe_component(raw, "fallback")
    assert name and "/" not in name and "\\" not in name and "\0" not in name
    assert name not in (".", "..") and not name.startswith(".")
    assert len(name) <= 100 and all(ch.isprintable() for ch in name)


def state(index: int, filename: str | None, source: str | None = None) -> dict[str, Any]:
    return {"index": index, "filename": filename, "source": source, "state": "succeeded", "error": None,
            "reused": False, "outputs": []}


def output(target: str = "thumb", fmt: str = "jpeg") -> dict[str, Any]:
    return {"target": target, "width": 1, "height": 1, "format": fmt, "bytes": 1, "url": "http://x/y"}


def test_download_paths_stay_under_the_directory(tmp_path):
    root = tmp_path / "out"
    planner = DownloadPlanner(root)
    hostile = ["../../etc/passwd", "a/../../b", "/etc/passwd", "..", "C:\\x\\..\\..\\evil.png", ".bashrc", None]
    paths = [planner.path_for(state(i, name, source="../../up/x.jpg" if name is None else None),
                              output("../../../tmp/t", "../jpeg"))
             for i, name in enumerate(hostile)]
    for path in paths:
        assert path.resolve().is_relative_to(root.resolve())
        assert path.parent.parent == root.resolve()  # exactly DIR/<image>/<target>.<ext>
    assert [p.parent.name for p in paths] == ["passwd", "b", "passwd-2", "file-3", "evil", "bashrc", "x"]
    assert paths[0].name == "t.jpg"  # the last component of target and format only; jpeg is written .jpg
    assert planner.path_for(state(9, "photo.JPG"), output("thumb", "jpeg")) == root.resolve() / "photo/thumb.jpg"


def test_download_paths_keep_one_folder_per_image(tmp_path):
    planner = DownloadPlanner(tmp_path)
    a_jpg, a_png, same = state(0, "a.jpg"), state(1, "A.png"), state(0, "a.jpg")
    assert planner.folder_for(a_jpg) == "a"
    assert planner.folder_for(a_png) == "A-1"  # case-insensitive filesystems would merge a/ and A/
    assert planner.folder_for(same) == "a"  # the same file (by index) keeps its folder for every target


def test_download_paths_refuse_a_symlink_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "out"
    root.mkdir()
    (root / "photo").symlink_to(outside)
    with pytest.raises(UnsafePath):
        DownloadPlanner(root).path_for(state(0, "photo.jpg"), output())


def test_printable_removes_terminal_control():
    assert printable("a\x1b[2Jb\u202ec\n") == "a?[2Jb?c?"
    assert len(printable("x" * 1000, 10)) == 10


def test_folders_expand_to_their_image_files(tmp_path):
    (tmp_path / "b.JPG").write_bytes(b"x")
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / ".hidden.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.jpg").write_bytes(b"x")
    explicit = tmp_path / "notes.txt"
    assert expand_paths([tmp_path, explicit], print) == [tmp_path / "a.png", tmp_path / "b.JPG", explicit]


# --- the client over a mock transport ------------------------------------------------------------------------


def mock_client(handler) -> KresizeClient:
    return KresizeClient("http://api.test", "tok", transport=httpx.MockTransport(handler))


def test_client_raises_one_error_from_the_contract_shape():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer tok"
        return httpx.Response(422, json={"error": {"status": 422, "message": "invalid resize parameters",
                                                   "details": ["width: must be positive"], "files": None}})
    with mock_client(handler) as client, pytest.raises(ApiError) as caught:
        client.job("x")
    assert (caught.value.status, caught.value.message, caught.value.details) == (
        422, "invalid resize parameters", ["width: must be positive"])


def test_client_understands_other_error_bodies_too():
    answers = iter([httpx.Response(404, json={"detail": "no job named 'x'"}),
                    httpx.Response(502, text="<html>Bad Gateway</html>")])
    with mock_client(lambda request: next(answers)) as client:
        with pytest.raises(ApiError, match="no job named"):
            client.job("x")
        with pytest.raises(ApiError) as caught:
            client.jobs()
    assert caught.value.status == 502 and "Bad Gateway" in caught.value.message


def test_client_reports_an_unreachable_api_as_status_0():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)
    with mock_client(handler) as client, pytest.raises(ApiError) as caught:
        client.jobs()
    assert caught.value.status == 0 and "http://api.test" in caught.value.message


def test_client_follows_file_pages_and_quotes_names():
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        cursor = request.url.params.get("cursor")
        page = {None: ([0, 1], "c2"), "c2": ([2, 3], "c3"), "c3": ([4], None)}[cursor]
        return httpx.Response(200, json={"items": [state(i, f"{i}.jpg") for i in page[0]], "next": page[1],
                                         "total": 5})
    with mock_client(handler) as client:
        assert [f["index"] for f in client.files("a/../b", state="succeeded", limit=2)] == [0, 1, 2, 3, 4]
    assert len(seen) == 3 and all(url.startswith("http://api.test/v1/jobs/a%2F..%2Fb/files?") for url in seen)
    assert "state=succeeded" in seen[0] and "cursor=c3" in seen[2]


def test_client_stops_on_a_cursor_that_repeats():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"items": [], "next": "same", "total": 0})
    with mock_client(handler) as client, pytest.raises(ApiError, match="twice"):
        list(client.files("x"))


def test_client_submits_multipart_streamed_from_disk(tmp_path):
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff\xd8 not really a jpeg")
    received: dict[str, Any] = {}

    def handler(request: httpx.Request) -> httpx.Response:
        received["type"] = request.headers["Content-Type"]
        received["length"] = request.headers.get("Content-Length")
        received["body"] = request.read()
        return httpx.Response(202, json={"name": "upload-1", "statusUrl": "/v1/jobs/upload-1", "files": []})
    with mock_client(handler) as client:
        created = client.submit([photo], urls=["https://a/1.jpg", "https://a/2.jpg"],
                                target={"width": 64, "height": None, "quality": 80})
    body = received["body"]
    assert created["name"] == "upload-1" and received["type"].startswith("multipart/form-data")
    assert received["length"] == str(len(body))  # sizes known up front: no chunked upload
    assert b'name="width"\r\n\r\n64\r\n' in body and b'name="quality"\r\n\r\n80\r\n' in body
    assert b'name="height"' not in body
    assert body.count(b'name="urls"') == 2
    assert b'filename="photo.jpg"' in body and b"not really a jpeg" in body


def test_client_submits_urls_alone_as_json():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Content-Type"] == "application/json"
        assert json.loads(request.read()) == {"urls": ["https://a/1.jpg"], "targets": [{"name": "t", "width": 9}]}
        return httpx.Response(202, json={"name": "upload-2", "statusUrl": "/v1/jobs/upload-2", "files": []})
    with mock_client(handler) as client:
        assert client.submit(urls=["https://a/1.jpg"], targets=[{"name": "t", "width": 9}])["name"] == "upload-2"


# --- the console script against a fake API -------------------------------------------------------------------


def png(width: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, 4), "red").save(buffer, "PNG")
    return buffer.getvalue()


class FakeApi(BaseHTTPRequestHandler):
    """Just enough of the contract for one job, with the names a hostile or broken server could send."""

    base = ""
    phase = "PartiallyFailed"
    events = True
    polls = 0
    requests: ClassVar[list[tuple[str, str, str | None]]] = []  # (method, path, Authorization)
    blobs: ClassVar[dict[str, bytes]] = {}
    files: ClassVar[list[dict[str, Any]]] = []
    resumed_from: ClassVar[list[str | None]] = []  # Last-Event-ID of each events request

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _record(self) -> tuple[str, dict[str, list[str]]]:
        url = urlsplit(self.path)
        type(self).requests.append((self.command, url.path, self.headers.get("Authorization")))
        return url.path, parse_qs(url.query)

    def do_POST(self) -> None:
        path, _ = self._record()
        self.rfile.read(int(self.headers["Content-Length"]))
        assert path == "/v1/jobs"
        self._json(202, {"name": "job-1", "statusUrl": "/v1/jobs/job-1", "filesUrl": "/v1/jobs/job-1/files",
                         "eventsUrl": "/v1/jobs/job-1/events",
                         "files": [{"filename": "a.png", "accepted": True, "error": None}]})

    def do_GET(self) -> None:
        path, query = self._record()
        cls = type(self)
        if self.headers.get("Authorization") != "Bearer secret" and not path.startswith("/blob/"):
            self._json(401, {"error": {"status": 401, "message": "a valid API token is required", "details": [],
                                       "files": None}})
        elif path == "/v1/jobs/job-1":
            cls.polls += 1
            # Without an event stream the first poll finds it running, so that polling goes on.
            phase = cls.phase if cls.events or cls.polls > 1 else "Running"
            self._json(200, {**summary(phase, failed=1, succeeded=len(cls.files)),
                             "failures": [{"source": "k", "reason": "broken"}], "conditions": []})
        elif path == "/v1/jobs/job-1/files":  # two files a page, whatever the limit
            start = int(query.get("cursor", ["0"])[0])
            more = start + 2 < len(cls.files)
            self._json(200, {"items": cls.files[start:start + 2], "next": str(start + 2) if more else None,
                             "total": len(cls.files)})
        elif path == "/v1/jobs/job-1/events" and cls.events:
            # The first connection breaks after two events; a reconnection resumes after Last-Event-ID.
            resume = self.headers.get("Last-Event-ID")
            cls.resumed_from.append(resume)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            failed = {"index": 9, "filename": "bad.png", "source": None, "state": "failed", "error": "broken",
                      "reused": False, "outputs": []}
            events = [("progress", summary("Running", succeeded=0)), ("file", failed), ("file", failed),
                      ("progress", summary("Running", succeeded=1, failed=1)),
                      ("end", summary(cls.phase, succeeded=1, failed=1))]
            first, last = (0, 2) if resume is None else (int(resume) + 1, len(events))
            for number in range(first, last):
                event, data = events[number]
                self.wfile.write(f": ping\r\n\r\nid: {number}\r\nevent: {event}\r\ndata: {json.dumps(data)}\r\n\r\n"
                                 .encode())
                self.wfile.flush()
        elif path.startswith("/blob/") and path in cls.blobs:
            data = cls.blobs[path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        else:
            self._json(404, {"error": {"status": 404, "message": f"no route {path}", "details": [], "files": None}})


@pytest.fixture
def fake_api() -> Iterator[type[FakeApi]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    FakeApi.base = f"http://127.0.0.1:{server.server_address[1]}"
    FakeApi.phase, FakeApi.events, FakeApi.polls = "PartiallyFailed", True, 0
    FakeApi.requests, FakeApi.blobs, FakeApi.files, FakeApi.resumed_from = [], {}, [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield FakeApi
    server.shutdown()
    server.server_close()


def add_file(api: type[FakeApi], filename: str | None, targets: list[tuple[str, str]], state: str = "succeeded",
             ) -> None:
    index = len(api.files)
    outputs = []
    for target, fmt in targets:
        data = png(8 + len(api.blobs))
        api.blobs[f"/blob/{len(api.blobs)}"] = data
        outputs.append({"target": target, "width": 8, "height": 4, "format": fmt, "bytes": len(data),
                        "url": f"{api.base}/blob/{len(api.blobs) - 1}?X-Amz-Signature=abc"})
    api.files.append({"index": index, "filename": filename, "source": f"uploads/{index}.png", "state": state,
                      "error": None if state == "succeeded" else "broken", "reused": False, "outputs": outputs})


def test_download_with_hostile_names_writes_under_the_directory_only(fake_api, tmp_path):
    for name in ["../../etc/passwd", "a/../../b.png", "/abs/evil.png", "..", None]:
        add_file(fake_api, name, [("../../thumb", "png"), ("/etc/cron.d/x", "../../png")])
    add_file(fake_api, "failed.png", [], state="failed")
    out = tmp_path / "work" / "out"
    result = run_cli("download", "job-1", str(out), "--json", api_url=fake_api.base, token="secret")
    assert result.returncode == EXIT_PARTIAL, result.stderr  # the job is PartiallyFailed
    report = json.loads(result.stdout)
    assert report["errors"] == [] and len(report["written"]) == 10
    written = sorted(p for p in (tmp_path / "work").rglob("*") if p.is_file())
    assert len(written) == 10 and all(p.is_relative_to(out) and p.parent.parent == out for p in written)
    assert {p.parent.name for p in written} == {"passwd", "b", "evil", "file-3", "4"}
    assert {p.name for p in written} == {"thumb.png", "x.png"}
    for path in written:
        with Image.open(path) as image:
            assert image.format == "PNG"
    assert not [p for p in (out).rglob(".kresize-*")]  # no temporary files left
    # The presigned URLs got no token; the API got it every time.
    assert all(auth is None for _, path, auth in fake_api.requests if path.startswith("/blob/"))
    assert all(auth == "Bearer secret" for _, path, auth in fake_api.requests if path.startswith("/v1/"))


def test_submit_wait_follows_the_event_stream_and_resumes_it(fake_api, tmp_path):
    add_file(fake_api, "a.png", [("thumb", "png")])
    photo = tmp_path / "a.png"
    photo.write_bytes(png(16))
    result = run_cli("submit", str(photo), "--width", "8", "--wait", "--json", api_url=fake_api.base,
                     token="secret")
    assert result.returncode == EXIT_PARTIAL, result.stderr
    report = json.loads(result.stdout)
    assert report["name"] == "job-1" and report["job"]["phase"] == "PartiallyFailed"
    assert [f["filename"] for f in report["results"]] == ["a.png"]
    assert ("GET", "/v1/jobs/job-1/events", "Bearer secret") in fake_api.requests
    assert fake_api.resumed_from == [None, "1"] and fake_api.polls == 1  # resumed, no polling but the last GET


def test_submit_wait_polls_when_there_is_no_event_stream(fake_api, tmp_path):
    fake_api.events, fake_api.phase = False, "Failed"
    photo = tmp_path / "a.png"
    photo.write_bytes(png(16))
    result = run_cli("submit", str(photo), "--width", "8", "--wait", api_url=fake_api.base, token="secret")
    assert result.returncode == EXIT_FAILED, result.stderr
    assert "polling" in result.stderr and "Failed" in result.stdout
    assert fake_api.polls >= 3  # Running, then Failed, then the final detail


def test_usage_errors_exit_2(tmp_path):
    photo = tmp_path / "a.png"
    photo.write_bytes(png(16))
    targets = tmp_path / "targets.json"
    targets.write_text('[{"name": "t", "width": 9}]')
    for args in (["submit", str(photo)],  # no size
                 ["submit", str(photo), "--width", "9", "--targets", str(targets)],  # both
                 ["submit", "--width", "9"],  # nothing to submit
                 ["submit", str(tmp_path / "missing.jpg"), "--width", "9"],
                 ["submit", str(photo), "--width", "0"],
                 ["status"]):
        result = run_cli(*args, api_url="http://127.0.0.1:9", token="x")
        assert result.returncode == EXIT_USAGE, (args, result.stdout, result.stderr)


def test_unreachable_api_exits_1():
    result = run_cli("ls", api_url="http://127.0.0.1:9", token="x", timeout=60)
    assert result.returncode == EXIT_API_ERROR
    assert "cannot talk to the API at http://127.0.0.1:9" in result.stderr


def test_help_lists_the_exit_codes():
    result = run_cli("--help", api_url="http://127.0.0.1:9", token=None)
    assert result.returncode == 0
    assert "Exit codes" in result.stdout
    for line in ("0: everything succeeded", "3: the job finished but some files failed", "4: the job failed"):
        assert line in result.stdout


# --- the console script against the whole platform -----------------------------------------------------------


@pytest.fixture(scope="module")
def photos(corpus) -> list[Path]:
    return sorted((corpus / "photos").glob("*.jpg"))[:2]


@pytest.fixture(scope="module")
def finished_job(platform, photos) -> str:
    """One job of alice's, submitted by the CLI without --wait and waited for over HTTP."""
    result = run_cli("submit", *map(str, photos), "--width", "64", "--json", api_url=platform.api_url,
                     token=platform.tokens["alice"])
    assert result.returncode == EXIT_OK, result.stderr
    name = json.loads(result.stdout)["name"]
    with platform.client("alice") as client:
        wait_for(lambda: client.get(f"/v1/jobs/{name}").json()["phase"] in ("Succeeded", "PartiallyFailed", "Failed"),
                 300, interval=0.5, message=f"job {name} to finish")
    return name


@pytest.mark.slow
def test_submit_wait_json_on_the_platform(platform, photos):
    result = run_cli("submit", *map(str, photos), "--width", "64", "--wait", "--json", api_url=platform.api_url,
                     token=platform.tokens["alice"])
    assert result.returncode == EXIT_OK, result.stderr
    report = json.loads(result.stdout)
    assert report["job"]["phase"] == "Succeeded" and report["job"]["progress"]["succeeded"] == 2
    assert [f["accepted"] for f in report["files"]] == [True, True]
    assert sorted(f["filename"] for f in report["results"]) == sorted(p.name for p in photos)
    for file in report["results"]:
        assert file["state"] == "succeeded" and file["error"] is None
        (out,) = file["outputs"]
        assert out["target"] == "default" and out["width"] == 64 and out["bytes"] > 0


@pytest.mark.slow
def test_submit_names_a_rejected_file_and_exits_3(platform, photos, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image at all\n")
    result = run_cli("submit", str(photos[0]), str(notes), "--width", "64", "--wait", api_url=platform.api_url,
                     token=platform.tokens["alice"])
    assert result.returncode == EXIT_PARTIAL, (result.stdout, result.stderr)
    assert "polling" not in result.stderr, result.stderr  # followed over the event stream
    assert "notes.txt" in result.stdout and "rejected" in result.stdout
    assert "1 file(s) accepted, 1 rejected" in result.stdout


@pytest.mark.slow
def test_status_and_ls(platform, finished_job):
    env = {"api_url": platform.api_url, "token": platform.tokens["alice"]}
    result = run_cli("status", finished_job, **env)
    assert result.returncode == EXIT_OK, result.stderr
    assert finished_job in result.stdout and "Succeeded" in result.stdout and "2/2" in result.stdout
    status = json.loads(run_cli("status", finished_job, "--json", **env).stdout)
    assert status["name"] == finished_job and status["phase"] == "Succeeded"
    listed = run_cli("ls", "--json", **env)
    assert listed.returncode == EXIT_OK, listed.stderr
    assert finished_job in [job["name"] for job in json.loads(listed.stdout)["items"]]
    table = run_cli("ls", **env)
    assert table.returncode == EXIT_OK and finished_job in table.stdout
    # another tenant sees neither the job in its list nor the job itself
    bob = {"api_url": platform.api_url, "token": platform.tokens["bob"]}
    assert finished_job not in run_cli("ls", "--json", **bob).stdout
    assert run_cli("status", finished_job, **bob).returncode == EXIT_API_ERROR


@pytest.mark.slow
def test_download_writes_decodable_images_under_the_directory(platform, finished_job, photos, tmp_path):
    out = tmp_path / "downloads"
    result = run_cli("download", finished_job, str(out), "--json", api_url=platform.api_url,
                     token=platform.tokens["alice"])
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["errors"] == []
    written = sorted(p for p in tmp_path.rglob("*") if p.is_file())
    assert written == sorted(out / p.stem / "default.jpg" for p in photos)
    for path in written:
        with Image.open(path) as image:
            image.load()
            assert image.format == "JPEG" and image.width == 64


@pytest.mark.slow
def test_cancel_removes_the_job(platform, photos):
    env = {"api_url": platform.api_url, "token": platform.tokens["alice"]}
    submitted = run_cli("submit", *map(str, photos), "--width", "64", "--json", **env)
    assert submitted.returncode == EXIT_OK, submitted.stderr
    name = json.loads(submitted.stdout)["name"]
    result = run_cli("cancel", name, **env)
    assert result.returncode == EXIT_OK, result.stderr
    assert name in result.stdout
    with platform.client("alice") as client:
        wait_for(lambda: client.get(f"/v1/jobs/{name}").status_code == 404, 60, message=f"job {name} to go")
    assert run_cli("status", name, **env).returncode == EXIT_API_ERROR


@pytest.mark.slow
def test_bad_token_exits_1_with_a_clear_message(platform):
    result = run_cli("ls", api_url=platform.api_url, token="not-a-token")
    assert result.returncode == EXIT_API_ERROR
    assert "authentication failed (401)" in result.stderr and "KRESIZE_TOKEN" in result.stderr
    assert result.stdout == ""
    as_json = run_cli("ls", "--json", api_url=platform.api_url, token="not-a-token")
    assert as_json.returncode == EXIT_API_ERROR and json.loads(as_json.stdout)["error"]["status"] == 401
