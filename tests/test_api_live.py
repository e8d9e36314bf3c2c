"""The API's people-facing contract on the whole platform: files a page at a time with a state that moves image by
image, live events (SSE), the declared OpenAPI and its one error shape, URL sources behind the SSRF guard, and
results reused instead of resized again."""

from __future__ import annotations

import http.server
import json
import re
import threading
from pathlib import Path

import httpx
import pytest
from conftest import NAMESPACE
from harness.images import noise_png
from harness.procs import wait_for
from test_platform import TERMINAL, all_files, upload, wait_finished

pytestmark = pytest.mark.slow

SLOW = json.dumps([{"name": "a", "width": 900, "format": "avif"}, {"name": "w", "width": 320, "format": "webp"}])


def photos(corpus: Path) -> list[Path]:
    return sorted((corpus / "photos").glob("*.jpg"))


def sse_events(response: httpx.Response, stop_after: str = "end"):
    """(id, event, data) of a Server-Sent Events response, until an event of kind `stop_after`."""
    event: dict = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if "event" in event:
                parsed = (event.get("id"), event["event"], json.loads(event.get("data", "null")))
                yield parsed
                if parsed[1] == stop_after:
                    return
            event = {}
            continue
        field, _, value = line.partition(":")
        event[field] = value.removeprefix(" ")


# --- status: truthful and cheap ------------------------------------------------------------------------

def test_file_states_move_image_by_image_and_pages_cover_every_file_once(platform, corpus):
    with platform.client("alice") as client:
        images = photos(corpus)
        response = upload(client, [*images, corpus / "bad" / "empty.jpg"], targets=SLOW, parallelism="1",
                          reuse="false")
        assert response.status_code == 202, response.text
        name = response.json()["name"]
        assert response.json()["filesUrl"] == f"/v1/jobs/{name}/files"
        seen: set[str] = set()

        def states() -> set[str]:
            seen.update(f["state"] for f in all_files(client, name, limit=3))
            return seen
        wait_for(lambda: {"active", "waiting"} <= states() or client.get(f"/v1/jobs/{name}").json()["phase"]
                 in TERMINAL, 120, interval=0.1, message="files waiting and one active")
        assert {"active", "waiting"} <= seen, seen  # the pod's image is active, the rest wait their turn
        summary = wait_finished(client, name)
        files = all_files(client, name, limit=3)
    assert [f["index"] for f in files] == list(range(len(images) + 1))  # every file once, in order
    assert {f["state"] for f in files[:-1]} == {"succeeded"}
    refused = files[-1]
    assert refused["filename"] == "empty.jpg" and refused["state"] == "failed" and "empty" in refused["error"]
    assert summary["phase"] == "PartiallyFailed" and summary["progress"]["failed"] == 1
    assert summary["progress"]["total"] == summary["progress"]["done"] == len(images) + 1
    assert "files" not in summary  # the summary never lists files


def test_bad_page_parameters_get_the_error_shape(platform):
    with platform.client() as client:
        name = upload_one(client)
        for params in ({"limit": 0}, {"limit": 1001}, {"state": "done"}, {"cursor": "not-a-cursor"}):
            response = client.get(f"/v1/jobs/{name}/files", params=params)
            assert response.status_code == 422, (params, response.text)
            error = response.json()["error"]
            assert error["status"] == 422 and error["message"] and isinstance(error["details"], list)


def upload_one(client: httpx.Client, size: int = 24) -> str:
    response = client.post("/v1/jobs", files=[("files", ("one.png", noise_png(size)))], data={"width": "8"})
    assert response.status_code == 202, response.text
    return response.json()["name"]


# --- push: Server-Sent Events ------------------------------------------------------------------------------

def test_events_stream_progress_and_every_file_then_end_and_resume(platform, corpus):
    token = platform.tokens["bob"]
    with platform.client("bob") as client:
        response = upload(client, photos(corpus), targets=SLOW, reuse="false")
        name = response.json()["name"]
        url = f"{platform.api_url}/v1/jobs/{name}/events"
        results: dict[str, list] = {}

        def watch(key: str) -> None:  # three watchers at once: they share one feed
            with httpx.stream("GET", url, headers={"Authorization": f"Bearer {token}"}, timeout=300) as stream:
                assert stream.headers["content-type"].startswith("text/event-stream")
                results[key] = list(sse_events(stream))
        threads = [threading.Thread(target=watch, args=(str(n),)) for n in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        summary = client.get(f"/v1/jobs/{name}").json()
    for events in results.values():
        kinds = [kind for _, kind, _ in events]
        assert kinds[0] in ("progress", "file") and kinds[-1] == "end", kinds
        files = [data for _, kind, data in events if kind == "file"]
        assert sorted(f["index"] for f in files) == list(range(len(photos(corpus))))  # each file once
        assert all(f["state"] == "succeeded" and f["outputs"] for f in files)
        assert events[-1][2]["phase"] == summary["phase"] == "Succeeded"
        ids = [int(i) for i, _, _ in events]
        assert ids == sorted(ids)  # ids only grow: Last-Event-ID can resume
        progress = [data["progress"]["done"] for _, kind, data in events if kind == "progress"]
        assert progress == sorted(progress)
    # Resume after the first file event: only what came after it, ending with the same end.
    events = results["0"]
    first_file = next(i for i, (_, kind, _) in enumerate(events) if kind == "file")
    with httpx.stream("GET", url, params={"access_token": token},  # as a browser's EventSource sends it
                      headers={"Last-Event-ID": events[first_file][0]}, timeout=60) as stream:
        resumed = list(sse_events(stream))
    after = int(events[first_file][0])
    assert all(int(i) > after for i, _, _ in resumed) and resumed[-1][1:] == events[-1][1:]
    assert {e[0] for e in events[first_file + 1:]} <= {e[0] for e in resumed}  # nothing after it is lost
    # Someone else's job is a 404, with a token in the query as in a header.
    with platform.client("alice") as alice:
        assert alice.get(f"/v1/jobs/{name}/events").status_code == 404
    assert httpx.get(url, params={"access_token": "wrong"}).status_code == 401
    assert token not in platform.api_component.program.log.read_text()  # the query's token never reaches the log


def test_events_of_a_cancelled_job_end(platform, corpus):
    with platform.client() as client:
        name = upload(client, photos(corpus), targets=SLOW, parallelism="1").json()["name"]
        with client.stream("GET", f"/v1/jobs/{name}/events", timeout=120) as stream:
            events = sse_events(stream)
            assert next(events)[1] in ("progress", "file")
            assert client.delete(f"/v1/jobs/{name}").status_code == 202
            last = list(events)[-1]
    assert last[1] == "end" and last[2]["phase"] == "Deleted"


# --- a documented API ---------------------------------------------------------------------------------------

def test_openapi_declares_the_upload_form_from_the_crd_and_one_error_shape(platform):
    spec = httpx.get(f"{platform.api_url}/openapi.json").json()
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]
    form = body["multipart/form-data"]["schema"]["properties"]
    assert form["files"] == {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": form["files"]["description"]}
    assert (form["width"]["minimum"], form["width"]["maximum"], form["width"]["type"]) == (1, 16384, "integer")
    assert set(form["fit"]["enum"]) >= {"cover", "inside"} and form["quality"]["maximum"] == 100
    assert "urls" in body["application/json"]["schema"]["properties"]
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                responses = operation["responses"]
                assert responses["401"]["content"]["application/json"]["schema"] == {
                    "$ref": "#/components/schemas/ErrorBody"}, (method, path)
                ok = next(code for code in responses if code.startswith("2"))
                assert responses[ok].get("content"), (method, path)  # a response model for every route


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_swagger_and_redoc_are_served_offline(platform, page):
    html = httpx.get(f"{platform.api_url}{page}").text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
    scripts = [s for s in sources if s.endswith(".js")]
    assert scripts and not [s for s in sources if s.startswith(("http:", "https:", "//"))], sources
    for asset in scripts:
        assert httpx.get(f"{platform.api_url}{asset}").status_code == 200, asset


def test_unknown_and_misspelled_form_fields_are_refused(platform):
    before = len(platform.custom.list_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE,
                                                               "resizejobs")["items"])
    with platform.client() as client:
        response = client.post("/v1/jobs", files=[("files", ("a.png", noise_png(16)))],
                               data={"widht": "100", "height": "10"})
        json_response = client.post("/v1/jobs", json={"urls": ["http://127.0.0.1:1/a.png"], "width": 8, "colour": 1})
    for refused, field in ((response, "widht"), (json_response, "colour")):
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["status"] == 422 and any(d.startswith(f"{field}: unknown field") for d in error["details"])
    assert len(platform.custom.list_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE,
                                                             "resizejobs")["items"]) == before


# --- URL sources ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_server(corpus):
    """A local HTTP server with real photos, a redirect to the cloud metadata address and an HTML page."""
    photo = photos(corpus)[0].read_bytes()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/photo"):
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(photo)))
                self.end_headers()
                self.wfile.write(photo)
            elif self.path == "/to-metadata":
                self.send_response(302)
                self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                self.end_headers()
            else:
                body = b"<html>not an image</html>"
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_images_by_url_with_the_ssrf_guard(platform, image_server):
    port = image_server.rsplit(":", 1)[1]
    refused = {
        "http://169.254.169.254/latest/meta-data/": "169.254.169.254",  # cloud metadata
        f"{image_server}/to-metadata": "169.254.169.254",  # allowed host, redirected to metadata
        "http://10.0.0.1/a.jpg": "10.0.0.1",  # private
        f"http://[::1]:{port}/photo.jpg": "::1",  # loopback, not on the allowlist
        f"{image_server}/page.html": "html",  # not an image
        "file:///etc/passwd": "file",
    }
    with platform.client("alice") as client:
        response = client.post("/v1/jobs", data={"urls": f"{image_server}/photo-a.jpg\n{image_server}/photo-b.jpg",
                                                 "width": "48"}, files=[("urls", (None, url)) for url in refused])
        assert response.status_code == 202, response.text
        verdicts = response.json()["files"]
        assert [v["accepted"] for v in verdicts].count(True) == 2
        refusals = [v["error"] for v in verdicts if not v["accepted"]]
        assert len(refusals) == len(refused)
        for url, why in refused.items():
            assert any(why in (error or "") for error in refusals), (url, refusals)
        name = response.json()["name"]
        summary = wait_finished(client, name)
        files = all_files(client, name)
        as_json = client.post("/v1/jobs", json={"urls": [f"{image_server}/photo-c.jpg"], "width": 40,
                                                "format": "webp"})
        assert as_json.status_code == 202, as_json.text
        json_summary = wait_finished(client, as_json.json()["name"])
    assert summary["phase"] == "PartiallyFailed"  # the refused URLs count as failed
    assert summary["progress"] == {"total": 1 + len(refused), "succeeded": 1, "failed": len(refused), "reused": 0,
                                   "done": 1 + len(refused)}  # the two photo URLs are one content, one image
    (image,) = [f for f in files if f["state"] == "succeeded"]
    assert image["outputs"][0]["width"] == 48 and image["filename"] == "photo-a.jpg"
    assert json_summary["phase"] == "Succeeded"


# --- reuse ------------------------------------------------------------------------------------------------------

def test_a_repeated_job_reuses_every_variant_without_a_pod(platform, corpus, tmp_path):
    sources = [tmp_path / f"{n}.png" for n in range(3)]  # content no other test uploads
    for number, path in enumerate(sources):
        path.write_bytes(noise_png(40 + number))
    targets = json.dumps([{"name": "s", "width": 20, "format": "webp"}, {"name": "m", "width": 30}])
    with platform.client() as client:
        first = upload(client, sources, targets=targets).json()["name"]
        assert wait_finished(client, first)["progress"]["reused"] == 0
        renamed = json.dumps([{"name": "small", "width": 20, "format": "webp"}, {"name": "medium", "width": 30}])
        second = upload(client, sources, targets=renamed).json()["name"]
        summary = wait_finished(client, second)
        files = all_files(client, second)
        other = upload(client, sources[:1], targets=json.dumps([{"name": "s", "width": 21}])).json()["name"]
        assert wait_finished(client, other)["progress"]["reused"] == 0  # other parameters: resized
        fresh = upload(client, sources[:1], targets=targets, reuse="false").json()["name"]
        assert wait_finished(client, fresh)["progress"]["reused"] == 0  # asked not to reuse
    with platform.client("bob") as bob:  # another tenant's results are never reused (nor known to exist)
        theirs = upload(bob, sources, targets=targets).json()["name"]
        assert wait_finished(bob, theirs)["progress"]["reused"] == 0
    assert summary["phase"] == "Succeeded" and summary["progress"]["reused"] == summary["progress"]["total"] == 3
    assert all(f["reused"] and [o["target"] for o in f["outputs"]] == ["small", "medium"] for f in files)
    for file in files:  # its own copies, under its own prefix, that load
        for output in file["outputs"]:
            assert output["path"].startswith(f"results/{NAMESPACE}/{second}/")
            assert httpx.get(output["url"]).status_code == 200
    assert platform.runner.running(f"{second}-resize") == [] and not platform.runner.logs(f"{second}-resize", 0)
