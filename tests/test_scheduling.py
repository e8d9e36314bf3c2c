"""The pod budget, shared live, on the platform: the real operator's scheduler, real resizer processes under pod
rules, the Job runner playing the Job controller (it deletes excess pods when parallelism drops or the Job is
suspended: SIGTERM, terminating until they exit), and a real S3 server.

The platform's budget is 2 pods (conftest: operator.maxPods). What these tests hold to:
- the pods that exist (active and terminating, all jobs) never exceed the budget;
- jobs share it, the rest queue, and a job's pods flow to the others when it finishes or is suspended;
- no finished image is ever made again: by a scale-down, a suspend/resume or an operator restart;
- deleting a ResizeJob stops its pods and removes its files as spec.cleanup says; a TTL deletes finished jobs.
"""

from __future__ import annotations

import collections
import json
import re
from pathlib import Path

import pytest
from conftest import BUCKET, NAMESPACE
from harness.images import noise_png
from harness.procs import wait_for
from kresize_common import layout
from test_platform import TERMINAL, create_resizejob, upload, upload_copies, wait_phase

pytestmark = pytest.mark.slow

BUDGET = 2
SLOW_TARGETS = [{"name": "a", "width": 640, "format": "avif"}, {"name": "w", "width": 320, "format": "webp"}]
RESIZED = re.compile(r'"resized (\S+) into')


def resized_counts(platform, job_name: str, shards: int) -> collections.Counter[str]:
    """How often each image was made, over every attempt of every index (the pods' own log lines)."""
    return collections.Counter(key for index in range(shards)
                               for key in RESIZED.findall(platform.runner.logs(job_name, index)))


def pods_given(platform, name: str) -> int | None:
    return (platform.resizejob(name).get("status") or {}).get("parallelism")


def condition(status: dict, type_: str) -> dict:
    return {c["type"]: c for c in status.get("conditions") or []}.get(type_, {})


def photos(corpus: Path) -> list[Path]:
    return sorted((corpus / "photos").glob("*.jpg"))


def test_jobs_share_the_budget_queue_and_hand_pods_on_and_no_image_is_made_twice(platform, corpus):
    platform.runner.max_pods_total = 0
    for name in ("share-a", "share-b", "share-c"):
        upload_copies(platform, f"samples/{name}/", photos(corpus), 2)
    spec = {"targets": SLOW_TARGETS, "parallelism": 4, "reuse": False}  # every image really made, by pods
    create_resizejob(platform, "share-a", {**spec, "source": {"prefix": "samples/share-a/"}})
    # Alone, A takes the whole budget.
    wait_for(lambda: pods_given(platform, "share-a") == BUDGET and len(platform.runner.running("share-a-resize"))
             == BUDGET, 60, interval=0.05, message="A given the whole budget, its pods running")
    create_resizejob(platform, "share-b", {**spec, "source": {"prefix": "samples/share-b/"}})
    # B arrives: A gives one pod back (it checkpoints and exits), then B gets it. Equal shares: 1 and 1.
    wait_for(lambda: [pods_given(platform, n) for n in ("share-a", "share-b")] == [1, 1], 60, interval=0.1,
             message="A and B at one pod each")
    create_resizejob(platform, "share-c", {**spec, "source": {"prefix": "samples/share-c/"}})
    # The Job is made Queued at creation; the scheduler then gives it a place in the queue.
    queued = wait_for(lambda: (status := platform.resizejob("share-c").get("status") or {}).get("phase") == "Queued"
                      and "queuePosition" in status and status, 30, message="share-c queued with a position")
    assert queued["queuePosition"] == 1 and queued["parallelism"] == 0
    assert condition(queued, "Admitted")["status"] == "False" and condition(queued, "Admitted")["reason"] == "Queued"
    assert platform.runner.running("share-c-resize") == []  # a queued job holds no pod
    platform.restart_operator()  # the scheduler's state is rebuilt from the cluster alone
    for name in ("share-a", "share-b", "share-c"):
        status = wait_phase(platform, name, TERMINAL, 300)
        assert status["phase"] == "Succeeded", status
        assert status["succeeded"] == status["total"] == len(photos(corpus)) * 2 and status["parallelism"] == 0
        made = resized_counts(platform, f"{name}-resize", status["shards"])
        assert set(made) == {f"samples/{name}/{c}/{p.name}" for c in range(2) for p in photos(corpus)}
        assert set(made.values()) == {1}, made  # every image made once: no scale-down or restart redid one
    assert platform.runner.stopped["share-a-resize"] >= 1  # A really was scaled down mid-shard
    assert platform.runner.max_pods_total <= BUDGET  # never more pods than the budget, terminating ones included
    events = platform.core.list_namespaced_event(NAMESPACE, field_selector="involvedObject.name=share-c").items
    assert {"Queued", "Running", "Succeeded"} <= {e.reason for e in events}


def test_suspend_releases_the_pods_and_resume_redoes_no_finished_image(platform, corpus):
    upload_copies(platform, "samples/suspend/", photos(corpus), 2)
    name, job_name = "suspend", "suspend-resize"
    create_resizejob(platform, name, {"source": {"prefix": "samples/suspend/"}, "targets": SLOW_TARGETS,
                                      "reuse": False})
    wait_for(lambda: int((platform.resizejob(name).get("status") or {}).get("progress", "0/1").split("/")[0]) >= 2, 120,
             interval=0.1, message="a few images done")
    platform.custom.patch_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", name,
                                                   {"spec": {"suspend": True}})
    status = wait_phase(platform, name, {"Suspended"}, 30)
    assert condition(status, "Suspended")["status"] == "True" and status["parallelism"] == 0
    assert platform.batch.read_namespaced_job(job_name, NAMESPACE).spec.suspend is True
    wait_for(lambda: platform.runner.running(job_name) == [] and platform.runner.pods() == 0, 60,
             message="its pods gone")
    done_before = int(platform.resizejob(name)["status"]["progress"].split("/")[0])
    platform.custom.patch_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", name,
                                                   {"spec": {"suspend": False}})
    status = wait_phase(platform, name, TERMINAL, 300)
    assert status["phase"] == "Succeeded" and status["succeeded"] == status["total"]
    assert condition(status, "Suspended")["status"] == "False"
    made = resized_counts(platform, job_name, status["shards"])
    assert len(made) == status["total"] and set(made.values()) == {1}, made
    assert 0 < done_before < status["total"]


def test_deleting_a_job_stops_its_pods_and_cleans_up_as_spec_cleanup_says(platform, corpus):
    upload_copies(platform, "samples/cleanup/", photos(corpus), 2)
    name, job_name = "cleanup", "cleanup-resize"
    create_resizejob(platform, name, {"source": {"prefix": "samples/cleanup/"}, "targets": SLOW_TARGETS,
                                      "cleanup": {"outputs": "Delete"}, "reuse": False})
    rj = wait_phase(platform, name, {"Running"}, 60)
    work = layout.work_prefix(NAMESPACE, name, platform.resizejob(name)["metadata"]["uid"])
    wait_for(lambda: list(platform.s3.list_objects(BUCKET, prefix=rj["results"]["outputPrefix"], recursive=True)),
             120, interval=0.1, message="some variants")
    with platform.client() as client:
        assert client.delete(f"/v1/jobs/{name}").status_code == 202
    wait_for(lambda: not platform.custom.list_namespaced_custom_object(
        "kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", field_selector=f"metadata.name={name}")["items"],
        60, message="the ResizeJob gone (its finalizer done)")
    assert platform.batch.list_namespaced_job(NAMESPACE, label_selector=f"kresize.dev/resizejob={name}").items == []
    wait_for(lambda: platform.runner.running(job_name) == [], 30, message="its pods stopped")
    assert list(platform.s3.list_objects(BUCKET, prefix=work, recursive=True)) == []
    assert list(platform.s3.list_objects(BUCKET, prefix=rj["results"]["outputPrefix"], recursive=True)) == []
    assert list(platform.s3.list_objects(BUCKET, prefix="samples/cleanup/", recursive=True))  # never the source


def test_deleting_an_upload_job_deletes_the_originals_no_other_job_names(platform, tmp_path):
    files = []
    for number in range(2):  # content no other test uploads (originals are content-addressed and shared)
        files.append(tmp_path / f"{number}.png")
        files[-1].write_bytes(noise_png(64))
    targets = json.dumps([{"name": "t", "width": 64}])
    with platform.client("alice") as client:
        first = upload(client, files, targets=targets).json()["name"]
        second = upload(client, files[:1], targets=targets).json()["name"]  # shares one original with the first
        for name in (first, second):
            wait_phase(platform, name, TERMINAL, 120)
        keys = platform.resizejob(first)["spec"]["source"]["keys"]
        shared = platform.resizejob(second)["spec"]["source"]["keys"]
        assert client.delete(f"/v1/jobs/{first}").status_code == 202
        wait_for(lambda: client.get(f"/v1/jobs/{first}").status_code == 404, 60, message="first deleted")

        def exists(key: str) -> bool:
            return bool(list(platform.s3.list_objects(BUCKET, prefix=f"{layout.UPLOADS_SOURCE_PREFIX}{key}")))
        assert [exists(k) for k in keys] == [k in shared for k in keys]  # only the shared one is left
        assert not list(platform.s3.list_objects(BUCKET, prefix=layout.upload_record_key(NAMESPACE, first)))
        assert client.delete(f"/v1/jobs/{second}").status_code == 202
        wait_for(lambda: not any(exists(k) for k in keys), 60, message="the last original deleted with its job")


def test_a_finished_job_is_deleted_after_its_ttl(platform, corpus):
    platform.s3.fput_object(BUCKET, "samples/ttl/a.jpg", str(photos(corpus)[0]))
    create_resizejob(platform, "ttl", {"source": {"prefix": "samples/ttl/"}, "ttlSecondsAfterFinished": 1,
                                       "targets": [{"name": "t", "width": 32}]})
    wait_for(lambda: not platform.custom.list_namespaced_custom_object(
        "kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", field_selector="metadata.name=ttl")["items"],
        120, message="the finished job deleted by its TTL")
