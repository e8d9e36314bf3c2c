"""The test harness itself: the apiserver semantics and Job-controller behaviour our tests rely on."""

from __future__ import annotations

import sys
import time

import kubernetes
import pytest
from conftest import CRD, kube_api
from harness.jobs import JobRunner, compress
from harness.kube import label_selector_matches, start_emulator
from harness.procs import wait_for

GROUP, VERSION, PLURAL = "kresize.dev", "v1alpha1", "resizejobs"


@pytest.fixture
def api(tmp_path):
    emulator = start_emulator([CRD])
    yield kube_api(emulator.write_kubeconfig(tmp_path / "kubeconfig")), tmp_path / "kubeconfig"
    emulator.stop()


def resizejob(name: str, **spec) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResizeJob", "metadata": {"name": name, "labels": {"a": "1"}},
            "spec": {"source": {"prefix": "p/"}, "targets": [{"name": "t", "width": 10}], **spec}}


def test_metadata_generation_and_status_subresource(api):
    custom = kubernetes.client.CustomObjectsApi(api[0])
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, resizejob("a"))
    meta = created["metadata"]
    assert meta["uid"] and meta["creationTimestamp"] and meta["generation"] == 1
    assert created["spec"]["targets"][0]["fit"] == "cover"  # defaulted
    status = custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, "default", PLURAL, "a", {"status": {"phase": "Running"}, "metadata": {"labels": {"b": "2"}}})
    assert status["status"] == {"phase": "Running"} and status["metadata"]["generation"] == 1
    assert "b" not in status["metadata"]["labels"]  # /status changes only status
    assert int(status["metadata"]["resourceVersion"]) > int(meta["resourceVersion"])
    main = custom.patch_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "a",
                                                 {"status": {"phase": "Failed"}, "metadata": {"labels": {"b": "2"}}})
    assert main["status"] == {"phase": "Running"} and main["metadata"]["labels"]["b"] == "2"  # main ignores status
    again = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "a", {"metadata": {"labels": {"b": "2"}}})
    assert again["metadata"]["resourceVersion"] == main["metadata"]["resourceVersion"]  # no-op writes are no-ops


def test_errors_like_the_apiserver(api):
    custom = kubernetes.client.CustomObjectsApi(api[0])
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, resizejob("a"))
    for body, status in [(resizejob("a"), 409), (resizejob("b", targets=[]), 422),
                         (resizejob("c", targets=[{"name": "t", "width": 1}, {"name": "t", "width": 2}]), 422),
                         (resizejob("d", targets=[{"name": "t", "width": 16385}]), 422)]:
        with pytest.raises(kubernetes.client.ApiException) as error:
            custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
        assert error.value.status == status
    with pytest.raises(kubernetes.client.ApiException) as error:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "missing")
    assert error.value.status == 404
    pruned = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, resizejob("e", unknown=1))
    assert "unknown" not in pruned["spec"]


def test_selectors_and_garbage_collection(api):
    custom = kubernetes.client.CustomObjectsApi(api[0])
    batch = kubernetes.client.BatchV1Api(api[0])
    owner = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, resizejob("owner"))
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, label_selector="a=1")
    assert [i["metadata"]["name"] for i in listed["items"]] == ["owner"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, label_selector="a!=1")["items"] == []
    batch.create_namespaced_job("default", {"metadata": {"name": "child", "ownerReferences": [
        {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResizeJob", "name": "owner", "uid": owner["metadata"]["uid"]}]},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "x"}], "restartPolicy": "Never"}}}})
    custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "owner")
    assert batch.list_namespaced_job("default").items == []


@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [("a=1,b", {"a": "1", "b": ""}, True), ("a in (1,2)", {"a": "2"}, True), ("a notin (1)", {"a": "1"}, False),
     ("!a", {}, True), ("a==1", {"a": "2"}, False)],
)
def test_label_selectors(selector, labels, matches):
    assert label_selector_matches(selector, labels) is matches


def test_compress_indexes():
    assert compress({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8" and compress(set()) == ""


def finished(batch, name: str):
    job = batch.read_namespaced_job(name, "default")
    return job if job.status and job.status.conditions else None


def test_job_runner_retries_then_fails_an_index(api, tmp_path):
    script = ("import os, sys; i = int(os.environ['JOB_COMPLETION_INDEX']); "
              "sys.exit(1 if i == 1 else 0)")
    batch = kubernetes.client.BatchV1Api(api[0])
    runner = JobRunner(kubeconfig=api[1], namespace="default", log_dir=tmp_path / "logs").start()
    try:
        batch.create_namespaced_job("default", {"metadata": {"name": "j"}, "spec": {
            "completionMode": "Indexed", "completions": 3, "parallelism": 2, "backoffLimitPerIndex": 2,
            "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "x", "command": [sys.executable, "-c", script]}]}}}})
        job = wait_for(lambda: finished(batch, "j"), 60)
        assert [c.type for c in job.status.conditions] == ["FailureTarget", "Failed"]
        assert job.status.conditions[-1].reason == "FailedIndexes"
        assert (job.status.completed_indexes, job.status.failed_indexes) == ("0,2", "1")
        assert runner.started[("j", 1)] == 3 and job.status.failed == 3  # 1 try + backoffLimitPerIndex retries
        assert runner.max_running["j"] <= 2
    finally:
        runner.stop()


def test_job_runner_deadline(api, tmp_path):
    batch = kubernetes.client.BatchV1Api(api[0])
    runner = JobRunner(kubeconfig=api[1], namespace="default", log_dir=tmp_path / "logs").start()
    try:
        started = time.monotonic()
        batch.create_namespaced_job("default", {"metadata": {"name": "slow"}, "spec": {
            "completionMode": "Indexed", "completions": 1, "activeDeadlineSeconds": 1,
            "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "c", "image": "x", "command": [sys.executable, "-c", "import time; time.sleep(60)"]}]}}}})
        job = wait_for(lambda: finished(batch, "slow"), 30)
        assert job.status.conditions[-1].reason == "DeadlineExceeded"
        assert time.monotonic() - started < 30 and runner.running("slow") == []
    finally:
        runner.stop()
