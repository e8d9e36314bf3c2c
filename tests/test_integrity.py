"""Integrity under faults: lost answers, failed creates racing on shared originals, orphans, hostile bodies."""

from __future__ import annotations

import concurrent.futures
import json

import httpx
import pytest
from conftest import BUCKET, NAMESPACE, ORPHAN_GRACE_SECONDS, start_component
from harness.images import noise_png
from harness.kube import Fault
from harness.procs import wait_for
from kresize_common import layout
from kresize_common.s3 import object_exists

pytestmark = pytest.mark.slow
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}


def original_key(data: bytes) -> str:
    import hashlib

    return layout.UPLOADS_SOURCE_PREFIX + layout.original_key(hashlib.sha256(data).hexdigest(), "png")


def phase(platform, name: str) -> str | None:
    return (platform.resizejob(name).get("status") or {}).get("phase")


def test_a_lost_create_answer_is_not_nothing_was_created(platform, kube):
    """The apiserver commits the ResizeJob but its answer never arrives: the API looks, finds it, answers 202."""
    emulator, _ = kube
    fault = emulator.inject(Fault("resizejobs", "lose-response", delay=6))
    data = noise_png(24)
    with platform.client() as client:
        response = client.post("/v1/jobs", files=[("files", ("a.png", data))], data={"width": "8"})
    assert fault.times == 0, "the fault did not strike"
    assert response.status_code == 202, response.text
    name = response.json()["name"]
    assert object_exists(platform.s3, BUCKET, layout.upload_record_key(NAMESPACE, name))
    assert object_exists(platform.s3, BUCKET, original_key(data))
    wait_for(lambda: phase(platform, name) in TERMINAL, 120, message=f"{name} to finish")
    assert phase(platform, name) == "Succeeded"


def test_failed_creates_never_delete_originals_others_use(platform, kube):
    """40 concurrent requests with the same new image, 20 of whose creates fail: every job that was
    accepted finds its original (before, the failing requests' rollback deleted it under them)."""
    emulator, _ = kube
    data = noise_png(24)
    emulator.inject(Fault("resizejobs", "fail", times=20))

    def submit(_: int) -> httpx.Response:
        with platform.client() as client:
            return client.post("/v1/jobs", files=[("files", ("same.png", data))], data={"width": "8"})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(submit, range(40)))
    codes = sorted(r.status_code for r in responses)
    assert codes == [202] * 20 + [503] * 20, codes
    assert all("nothing was created" in r.json()["error"]["message"] for r in responses if r.status_code == 503)
    names = [r.json()["name"] for r in responses if r.status_code == 202]
    wait_for(lambda: all(phase(platform, n) in TERMINAL for n in names), 300, interval=1,
             message="the accepted jobs to finish")
    assert [phase(platform, n) for n in names] == ["Succeeded"] * 20
    assert object_exists(platform.s3, BUCKET, original_key(data))


def test_unreferenced_originals_are_collected_after_the_grace_period(platform, kube):
    emulator, _ = kube
    orphan, kept = noise_png(24), noise_png(24)
    with platform.client() as client:
        emulator.inject(Fault("resizejobs", "fail"))
        failed = client.post("/v1/jobs", files=[("files", ("orphan.png", orphan))], data={"width": "8"})
        accepted = client.post("/v1/jobs", files=[("files", ("kept.png", kept))], data={"width": "8"})
    assert (failed.status_code, accepted.status_code) == (503, 202)
    assert object_exists(platform.s3, BUCKET, original_key(orphan))  # kept at first: it might be shared
    wait_for(lambda: not object_exists(platform.s3, BUCKET, original_key(orphan)), ORPHAN_GRACE_SECONDS + 30,
             interval=1, message="the operator to collect the orphan")
    assert object_exists(platform.s3, BUCKET, original_key(kept))  # its upload record names it


def test_a_chunked_body_over_the_limit_is_refused_as_it_arrives(platform, s3_server, kube, tmp_path):
    api = start_component("api", s3_server, kube[1], tmp_path / "api.log", limits={"maxRequestBytes": 100_000})
    sent = 0

    def body():
        nonlocal sent
        boundary = b"--x\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\n"
        yield boundary
        for _ in range(10_000):  # up to 640 MB if nobody stops it
            sent += 65536
            yield b"\0" * 65536

    try:
        before = {o.object_name for o in platform.s3.list_objects(BUCKET, recursive=True)}
        headers = {"Authorization": f"Bearer {platform.tokens['admin']}",
                   "Content-Type": "multipart/form-data; boundary=x"}
        response = httpx.post(f"{api.url}/v1/jobs", content=body(), headers=headers, timeout=60)
        assert response.request.headers["transfer-encoding"] == "chunked"  # no Content-Length to check up front
        assert response.status_code == 413 and "KRESIZE_MAX_REQUEST_BYTES" in response.text
        assert sent < 10_000 * 65536, "the API read the whole body"
        assert {o.object_name for o in platform.s3.list_objects(BUCKET, recursive=True)} == before
    finally:
        api.stop()


@pytest.mark.parametrize(("fields", "message"), [
    ({"width": "10", "blur": "nan"}, "not a number"),
    ({"width": "10", "sharpen": "inf"}, "not a number"),
    ({"targets": '[{"name": "t", "width": NaN}]'}, "not valid JSON"),
    ({"targets": "[" * 100_00 + "]" * 100_00}, "targets"),
    ({"targets": json.dumps([{"name": "t", "width": 16384, "height": 16384, "fit": "fill", "upscale": True}])},
     "KRESIZE_MAX_OUTPUT_PIXELS"),
    ({"targets": json.dumps([{"name": f"t{i}", "width": 7000, "height": 7000} for i in range(3)])},
     "KRESIZE_MAX_TOTAL_OUTPUT_PIXELS"),
])
def test_hostile_form_values_get_422_and_create_nothing(platform, fields, message):
    with platform.client() as client:
        response = client.post("/v1/jobs", files=[("files", ("a.png", noise_png(24)))], data=fields)
    assert response.status_code in (413, 422), response.text
    assert message in response.text


def test_integer_valued_floats_in_targets_are_whole_numbers(platform):
    with platform.client() as client:
        response = client.post("/v1/jobs", files=[("files", ("a.png", noise_png(40)))],
                               data={"targets": json.dumps([{"name": "t", "width": 10.0, "height": 8.0}])})
        assert response.status_code == 202, response.text
        name = response.json()["name"]
        wait_for(lambda: phase(platform, name) in TERMINAL, 120, message=f"{name} to finish")
        (entry,) = client.get(f"/v1/jobs/{name}/files").json()["items"]
    assert entry["state"] == "succeeded", entry
    assert (entry["outputs"][0]["width"], entry["outputs"][0]["height"]) == (10, 8)
