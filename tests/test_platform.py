"""The whole path over HTTP with real parts: upload -> ResizeJob -> Indexed Job -> resizer processes -> status.

Runs the real API and operator against the emulated apiserver and a real S3 server; the Job runner plays the
Job controller and kubelet by running `kresize-resizer run` per index.
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import httpx
import kubernetes
import pytest
from conftest import ALLOWED_MISSING_BUCKET, BUCKET, NAMESPACE
from harness.procs import wait_for
from kresize_common import layout
from PIL import Image

pytestmark = pytest.mark.slow

TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}
TARGETS = [
    {"name": "thumb", "width": 200, "height": 200, "fit": "cover", "format": "webp", "quality": 70},
    {"name": "medium", "width": 800, "height": 800, "fit": "inside", "format": "jpeg"},
    {"name": "banner", "width": 300, "height": 200, "fit": "contain", "format": "png"},
]
FORMATS = {"webp": "WEBP", "jpeg": "JPEG", "png": "PNG", "avif": "AVIF"}


def oriented_size(path: Path) -> tuple[int, int]:
    """Display size of a photo: stored size, swapped when the EXIF orientation turns it by 90 degrees."""
    with Image.open(path) as image:
        width, height = image.size
        return (height, width) if image.getexif().get(0x0112) in (5, 6, 7, 8) else (width, height)


def expected_size(width: int, height: int, target: dict) -> tuple[int, int]:
    """The documented fit rules, without upscaling (docs/design.md)."""
    box_w, box_h = target["width"], target["height"]
    if target["fit"] == "cover":  # exact box, shrunk proportionally when the image is smaller than it
        k = min(1, width / box_w, height / box_h)
        return round(box_w * k), round(box_h * k)
    if target["fit"] == "inside":
        scale = min(box_w / width, box_h / height, 1)
        return round(width * scale), round(height * scale)
    return box_w, box_h  # contain pads to the exact box


def wait_finished(client: httpx.Client, name: str, timeout: float = 300) -> dict:
    def finished():
        body = client.get(f"/v1/jobs/{name}").json()
        return body if body["phase"] in TERMINAL else None
    return wait_for(finished, timeout, interval=0.5, message=f"job {name} to finish")


def upload(client: httpx.Client, paths: list[Path], **fields: str) -> httpx.Response:
    files = [("files", (p.name, p.read_bytes(), "application/octet-stream")) for p in paths]
    return client.post("/v1/jobs", files=files, data=fields)


def all_files(client, name: str, **params) -> list[dict]:
    """Every file of a job, page by page (GET /v1/jobs/{name}/files, following `next`)."""
    items, cursor = [], None
    while True:
        page = client.get(f"/v1/jobs/{name}/files", params={**params, **({"cursor": cursor} if cursor else {})})
        assert page.status_code == 200, page.text
        items += page.json()["items"]
        cursor = page.json()["next"]
        if cursor is None:
            return items


def test_upload_to_status_with_good_and_bad_images(platform, corpus):
    good = sorted((corpus / "orientation").glob("*.jpg")) + sorted((corpus / "photos").glob("*.jpg"))
    bad = sorted((corpus / "bad").iterdir())
    with platform.client() as client:
        response = upload(client, good + bad, targets=json.dumps(TARGETS))
        assert response.status_code == 202, response.text
        created = response.json()
        name = created["name"]
        assert created["statusUrl"] == f"/v1/jobs/{name}"
        assert response.headers["location"] == created["statusUrl"]
        body = wait_finished(client, name)
        files = all_files(client, name)
        assert [f["index"] for f in files] == list(range(len(files)))
        assert [f["filename"] for f in all_files(client, name, state="failed", limit=2)] == [
            f["filename"] for f in files if f["state"] == "failed"]  # the filter, across pages

    by_name = {f["filename"]: f for f in files}
    assert set(by_name) == {p.name for p in good + bad}
    # The bad files fail one by one, with a reason; they never fail the job.
    for path in bad:
        record = by_name[path.name]
        assert record["state"] == "failed" and record["error"], record
        assert record["outputs"] == []
    assert "empty" in by_name["empty.jpg"]["error"]
    assert "pixels" in by_name["decompression_bomb.gif"]["error"]
    assert "truncated" in by_name["truncated_DSCN0010.jpg"]["error"].lower()

    # Every good file: every variant in S3 with the exact size and format, reachable by its presigned URL.
    for path in good:
        record = by_name[path.name]
        assert record["state"] == "succeeded" and record["reused"] is False, record
        width, height = oriented_size(path)
        assert [o["target"] for o in record["outputs"]] == [t["name"] for t in TARGETS]
        for target, output in zip(TARGETS, record["outputs"], strict=True):
            data = httpx.get(output["url"], timeout=30).content
            with Image.open(io.BytesIO(data)) as image:
                assert image.format == FORMATS[target["format"]], (path.name, target["name"])
                assert image.size == expected_size(width, height, target), (path.name, target["name"])
                assert (output["width"], output["height"]) == image.size
                assert output["bytes"] == len(data)
            assert output["path"].startswith(f"results/{NAMESPACE}/{name}/")
        if path.parent.name == "orientation":  # auto-rotated: landscapes stay landscape, portraits portrait
            medium = record["outputs"][1]
            landscape = medium["width"] > medium["height"]
            assert landscape == path.name.startswith("Landscape"), (path.name, medium)

    # The ResizeJob tells the same story, bounded, with standard conditions.
    resizejob = platform.resizejob(name)
    status = resizejob["status"]
    # The truncated JPEG reaches the resizer and fails there; the other 4 are refused at upload. Both count as
    # failed, in the ResizeJob as in the API: one total, one phase.
    total = len(good) + len(bad)
    assert body["phase"] == status["phase"] == "PartiallyFailed"
    assert (status["total"], status["succeeded"], status["failed"]) == (total, len(good), len(bad))
    assert body["progress"] == {"total": total, "succeeded": len(good), "failed": len(bad), "reused": 0,
                                "done": total}
    assert status["progress"] == f"{total}/{total}"
    assert status["observedGeneration"] == resizejob["metadata"]["generation"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Complete"]["status"] == "True" and conditions["Complete"]["reason"] == "PartiallyFailed"
    assert conditions["Progressing"]["status"] == "False"
    failed = [f["source"] or f["filename"] for f in files if f["state"] == "failed"]
    assert sorted(f["source"] for f in status["failures"]) == sorted(failed)  # by key, or by name if refused
    assert len(status["failures"]) == len(bad) and all(f["reason"] for f in status["failures"])
    assert status["completionTime"] >= status["startTime"]

    events = platform.core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
    assert {"JobCreated", "PartiallyFailed"} <= {e.reason for e in events}
    assert len(events) < 10, [e.reason for e in events]  # lifecycle Events only, no per-sync noise

    # Exactly one Job, owned by the ResizeJob, with the secret only referenced.
    jobs = platform.batch.list_namespaced_job(NAMESPACE, label_selector=f"kresize.dev/resizejob={name}").items
    assert [j.metadata.name for j in jobs] == [status["jobName"]]
    (owner,) = jobs[0].metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("ResizeJob", name, resizejob["metadata"]["uid"])
    assert jobs[0].spec.completion_mode == "Indexed" and jobs[0].spec.completions == status["shards"]


def test_kubectl_style_resizejob_over_a_prefix(platform, corpus):
    """A ResizeJob created directly (as `kubectl apply` does) over originals already in S3."""
    photos = sorted((corpus / "photos").glob("*.jpg"))
    for path in photos:
        platform.s3.fput_object(BUCKET, f"samples/kubectl/{path.name}", str(path))
    name = "kubectl-thumbs"
    platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {"source": {"prefix": "samples/kubectl/"},
                 "targets": [{"name": "small", "width": 160, "format": "avif", "upscale": False}],
                 "operations": {"grayscale": True},
                 "output": {"prefix": f"results/{NAMESPACE}/kubectl/"}},
    })
    status = wait_for(lambda: (platform.resizejob(name).get("status") or {}).get("phase") in TERMINAL
                      and platform.resizejob(name)["status"], 240, message=f"{name} to finish")
    assert status["phase"] == "Succeeded", status
    assert (status["total"], status["succeeded"], status["failed"]) == (len(photos), len(photos), 0)
    for path in photos:
        data = platform.s3.get_object(BUCKET, f"results/{NAMESPACE}/kubectl/{path.stem}/small.avif").read()
        with Image.open(io.BytesIO(data)) as image:
            width, height = oriented_size(path)
            assert image.format == "AVIF"
            assert image.size == (min(160, width), round(height * min(160, width) / width))
            pixels = image.convert("RGB").resize((8, 8)).get_flattened_data()
            assert all(abs(r - g) <= 3 and abs(g - b) <= 3 for r, g, b in pixels)  # grayscale


def test_operator_restart_mid_job_neither_duplicates_nor_loses(platform, corpus):
    sources = sorted((corpus / "orientation").glob("*.jpg"))
    keys = upload_copies(platform, "samples/restart/", sources, 3)
    name = "restart"
    platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {"source": {"prefix": "samples/restart/"}, "parallelism": 2,
                 "targets": [{"name": "t", "width": 64, "height": 64, "format": "jpeg"}]},
    })
    wait_for(lambda: (platform.resizejob(name).get("status") or {}).get("phase") == "Running", 60,
             message="Running")
    platform.restart_operator()  # SIGKILL: no chance to write anything on the way out
    time.sleep(1)
    platform.restart_operator()  # and once more while it is starting up
    status = wait_for(lambda: (platform.resizejob(name).get("status") or {}).get("phase") in TERMINAL
                      and platform.resizejob(name)["status"], 300, message=f"{name} to finish")
    assert status["phase"] == "Succeeded", status
    assert (status["total"], status["succeeded"], status["failed"]) == (len(keys), len(keys), 0)
    jobs = platform.batch.list_namespaced_job(NAMESPACE, label_selector=f"kresize.dev/resizejob={name}").items
    assert len(jobs) == 1
    outputs = [o.object_name for o in platform.s3.list_objects(
        BUCKET, prefix=f"results/{NAMESPACE}/{name}/", recursive=True)]
    assert sorted(outputs) == sorted(f"results/{NAMESPACE}/{name}/{k.removeprefix('samples/restart/')[:-4]}/t.jpg"
                                     for k in keys)


@pytest.mark.parametrize(
    ("files", "fields", "status", "message"),
    [
        ([], {"width": "10"}, 400, "no files"),
        ([("empty.jpg", b"")], {"width": "10"}, 400, "no file is a supported image"),
        ([("notes.jpg", b"hello, I am text")], {"width": "10"}, 415, "no file is a supported image"),
        ([("a.png", None)], {"width": "0"}, 422, "at least 1"),
        ([("a.png", None)], {"width": "10", "fit": "squash"}, 422, "not one of"),
        ([("a.png", None)], {}, 422, "width and/or height"),
    ],
)
def test_bad_requests_get_clear_errors_and_create_nothing(platform, files, fields, status, message):
    png = io.BytesIO()
    Image.new("RGB", (8, 8)).save(png, "PNG")
    before = {j["metadata"]["name"] for j in platform.custom.list_namespaced_custom_object(
        "kresize.dev", "v1alpha1", NAMESPACE, "resizejobs")["items"]}
    multipart = [("files", (n, png.getvalue() if d is None else d, "image/png")) for n, d in files]
    with platform.client() as client:
        response = client.post("/v1/jobs", files=multipart or None, data=fields) if multipart \
            else client.post("/v1/jobs", data=fields)
    assert response.status_code == status, response.text
    assert message in response.text
    after = {j["metadata"]["name"] for j in platform.custom.list_namespaced_custom_object(
        "kresize.dev", "v1alpha1", NAMESPACE, "resizejobs")["items"]}
    assert after == before


def test_health_endpoints(platform):
    assert httpx.get(f"{platform.api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(platform.operator.url, timeout=10).status_code == 200
    assert "/v1/jobs" in httpx.get(f"{platform.api_url}/openapi.json").json()["paths"]


def test_unknown_job_is_404_and_list_shows_jobs(platform):
    with platform.client() as client:
        assert client.get("/v1/jobs/nope").status_code == 404
        listing = client.get("/v1/jobs").json()["items"]
    assert all({"name", "phase", "progress"} <= set(item) for item in listing)
    assert httpx.get(f"{platform.api_url}/readyz").json() == {"status": "ready"}


def create_resizejob(platform, name: str, spec: dict) -> None:
    platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name}, "spec": spec})


def wait_phase(platform, name: str, phases: set[str], timeout: float = 240) -> dict:
    return wait_for(lambda: (platform.resizejob(name).get("status") or {}).get("phase") in phases
                    and platform.resizejob(name)["status"], timeout, message=f"{name} to reach {phases}")


def upload_copies(platform, prefix: str, paths: list[Path], copies: int) -> list[str]:
    """`copies` copies of each file under `prefix`<copy>/; their keys, in order."""
    keys = [f"{prefix}{copy}/{path.name}" for copy in range(copies) for path in paths]
    for key, path in zip(keys, paths * copies, strict=True):
        platform.s3.fput_object(BUCKET, key, str(path))
    return keys


def test_killed_resizer_pod_is_retried_and_parallelism_follows_the_work(platform, corpus):
    sources = sorted((corpus / "orientation").glob("*.jpg"))
    upload_copies(platform, "samples/podkill/", sources, 3)
    name = "podkill"
    create_resizejob(platform, name, {"source": {"prefix": "samples/podkill/"}, "parallelism": 5,
                                      "reuse": False,
                                      "targets": [{"name": "t", "width": 300, "format": "webp"}]})
    job_name = f"{name}-resize"
    platform.runner.hold(job_name, 3)  # the last shard's pod stays pending until released
    status = wait_phase(platform, name, {"Running", *TERMINAL}, 60)
    assert status["jobName"] == job_name
    # At most min(spec 5, budget 2) pods, 2 shards a pod: 4 shards; the budget gives it 2 pods.
    assert (status["shards"], status["shardSize"]) == (4, -(-len(sources) * 3 // 4))
    wait_for(lambda: platform.resizejob(name)["status"]["parallelism"] == 2, 30, message="2 pods")
    victim = wait_for(lambda: platform.runner.running(job_name), 60, interval=0.05, message="a running pod")[0]
    assert platform.runner.kill_index(job_name, victim)

    # Three shards done, one left: the scheduler lowers the Job's parallelism to what remains.
    wait_for(lambda: platform.batch.read_namespaced_job(job_name, NAMESPACE).spec.parallelism == 1, 120,
             message="parallelism lowered to 1")
    wait_for(lambda: platform.resizejob(name)["status"]["parallelism"] == 1, 10, message="status follows")
    platform.runner.release(job_name, 3)
    status = wait_phase(platform, name, TERMINAL)
    assert status["phase"] == "Succeeded", status
    assert (status["succeeded"], status["failed"]) == (len(sources) * 3, 0)
    assert platform.runner.started[(job_name, victim)] == 2  # the killed index ran again, once
    job = platform.batch.read_namespaced_job(job_name, NAMESPACE)
    assert job.status.failed == 1 and job.status.completed_indexes == "0-3"
    assert platform.runner.max_running[job_name] <= 2


def test_missing_output_bucket_fails_fast_with_a_reason(platform, corpus):
    platform.s3.fput_object(BUCKET, "samples/nobucket/a.jpg", str(corpus / "photos" / "DSCN0010.jpg"))
    create_resizejob(platform, "nobucket", {"source": {"prefix": "samples/nobucket/"},
                                            "output": {"bucket": ALLOWED_MISSING_BUCKET},
                                            "targets": [{"name": "t", "width": 10}]})
    status = wait_phase(platform, "nobucket", TERMINAL, 60)
    assert status["phase"] == "Failed"
    failed = {c["type"]: c for c in status["conditions"]}["Failed"]
    assert failed["reason"] == "SourceNotFound" and ALLOWED_MISSING_BUCKET in failed["message"]
    assert platform.batch.list_namespaced_job(NAMESPACE, label_selector="kresize.dev/resizejob=nobucket").items == []


def test_spec_is_immutable_and_invalid_specs_are_refused(platform):
    create_resizejob(platform, "immutable", {"source": {"prefix": "samples/none/"},
                                             "targets": [{"name": "t", "width": 10}]})
    with pytest.raises(kubernetes.client.ApiException) as refused:
        platform.custom.patch_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs",
                                                       "immutable", {"spec": {"parallelism": 3}})
    assert refused.value.status == 422 and "immutable" in refused.value.body
    with pytest.raises(kubernetes.client.ApiException) as invalid:
        create_resizejob(platform, "invalid", {"source": {"prefix": "x/"},
                                               "targets": [{"name": "t", "width": 0, "fit": "squash"}]})
    assert invalid.value.status == 422 and "width" in invalid.value.body and "fit" in invalid.value.body
    status = wait_phase(platform, "immutable", TERMINAL, 60)  # nothing under the prefix
    assert status["phase"] == "Failed"
    assert "no images found" in {c["type"]: c for c in status["conditions"]}["Failed"]["message"]


def test_deleted_job_is_recreated_and_finished_shards_are_not_redone(platform, corpus):
    sources = sorted((corpus / "orientation").glob("*.jpg"))
    upload_copies(platform, "samples/recreate/", sources, 2)
    name, job_name = "recreate", "recreate-resize"
    platform.runner.hold(job_name, 3)  # keep the job running until the Job has been deleted
    create_resizejob(platform, name, {"source": {"prefix": "samples/recreate/"}, "parallelism": 2,
                                      "reuse": False,
                                      "targets": [{"name": "t", "width": 100, "format": "png"}]})
    def completed_indexes() -> str:
        jobs = platform.batch.list_namespaced_job(NAMESPACE, label_selector=f"kresize.dev/resizejob={name}").items
        return (jobs[0].status.completed_indexes or "") if jobs and jobs[0].status else ""
    wait_for(lambda: completed_indexes() == "0-2", 120, message="shards 0-2 done")
    first_uid = platform.batch.read_namespaced_job(job_name, NAMESPACE).metadata.uid
    platform.batch.delete_namespaced_job(job_name, NAMESPACE)
    wait_for(lambda: any(j.metadata.uid != first_uid for j in platform.batch.list_namespaced_job(
        NAMESPACE, label_selector=f"kresize.dev/resizejob={name}").items), 60, message="the Job recreated")
    platform.runner.release(job_name, 3)
    status = wait_phase(platform, name, TERMINAL)
    assert status["phase"] == "Succeeded" and status["succeeded"] == status["total"] == len(sources) * 2
    assert status["shards"] == 4
    for index in range(3):  # ran again in the new Job, found its results, did nothing
        assert "already done" in platform.runner.logs(job_name, index)
    events = platform.core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
    assert "JobRecreated" in {e.reason for e in events}


def test_a_pod_stopped_by_sigterm_is_not_a_failure_and_loses_no_work(platform, corpus):
    """A pod the kubelet stops (SIGTERM: a scale-down, a deletion) checkpoints and exits 143; the Job's pod
    failure policy ignores that exit, so the index runs again without spending a retry, skipping what was done."""
    photos = sorted((corpus / "photos").glob("*.jpg"))
    upload_copies(platform, "samples/sigterm/", photos, 3)
    name = "sigterm"
    create_resizejob(platform, name, {"source": {"prefix": "samples/sigterm/"}, "parallelism": 1,
                                      "reuse": False,
                                      "retry": {"backoffLimitPerIndex": 0},
                                      # AVIF encodes slowly: the pod is still busy when it is stopped.
                                      "targets": [{"name": "t", "width": 1600, "format": "avif"}]})
    job_name = f"{name}-resize"
    uid = wait_phase(platform, name, {"Running", *TERMINAL}, 60) and platform.resizejob(name)["metadata"]["uid"]
    work = layout.work_prefix(NAMESPACE, name, uid)
    victim = wait_for(lambda: [i for i in platform.runner.running(job_name)
                               if list(platform.s3.list_objects(BUCKET, prefix=layout.checkpoints_prefix(work, i)))],
                      120, interval=0.05, message="a pod with a checkpoint")[0]
    assert platform.runner.terminate_index(job_name, victim)
    status = wait_phase(platform, name, TERMINAL)
    # backoffLimitPerIndex 0: had the stop counted as a failure, the index (and the job) would have failed.
    assert status["phase"] == "Succeeded", status
    assert (status["succeeded"], status["failed"]) == (len(photos) * 3, 0)
    assert platform.runner.ignored(job_name) == 1 and platform.runner.started[(job_name, victim)] == 2
    assert "were finished by an earlier attempt; not redoing them" in platform.runner.logs(job_name, victim)
