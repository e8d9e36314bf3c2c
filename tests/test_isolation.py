"""Tenant isolation in S3 on the platform: a ResizeJob outside the storage policy fails before any I/O."""

from __future__ import annotations

import kubernetes
import pytest
from conftest import BUCKET, NAMESPACE
from harness.procs import wait_for
from kresize_common import layout

pytestmark = pytest.mark.slow


@pytest.mark.parametrize(("name", "spec", "rule"), [
    ("read-uploads", {"source": {"prefix": "originals/"}}, "would list 'originals/'"),
    ("read-records", {"source": {"prefix": "uploads/"}}, "kresize's own records"),
    ("read-other-ns", {"source": {"prefix": "results/other-ns/"}}, "other namespaces' results"),
    ("write-other-ns", {"source": {"prefix": "samples/"}, "output": {"prefix": "results/other-ns/x/"}},
     "outside 'results/default/'"),
    ("other-bucket", {"source": {"bucket": "someone-elses", "prefix": "x/"}}, "source bucket 'someone-elses'"),
])
def test_spec_outside_the_policy_fails_forbidden_before_any_io(platform, name, spec, rule):
    platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {**spec, "targets": [{"name": "t", "width": 8}]}})
    status = wait_for(lambda: (platform.resizejob(name).get("status") or {}).get("phase") == "Failed"
                      and platform.resizejob(name)["status"], 60, message=f"{name} to fail")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "Forbidden" and rule in failed["message"], failed
    uid = platform.resizejob(name)["metadata"]["uid"]
    work = layout.work_prefix(NAMESPACE, name, uid)
    assert list(platform.s3.list_objects(BUCKET, prefix=work, recursive=True)) == []  # no plan, no shards
    assert platform.batch.list_namespaced_job(NAMESPACE, label_selector=f"kresize.dev/resizejob={name}").items == []
    events = platform.core.list_namespaced_event(NAMESPACE, field_selector=f"involvedObject.name={name}").items
    assert any(e.reason == "Forbidden" and rule in e.message for e in events)


def test_hostile_keys_are_refused_by_the_apiserver(platform):
    """The CRD's pattern refuses what S3 implementations might read differently."""
    for key in ("../x.jpg", ".hidden/x.jpg", "a%2e%2e/x.jpg", "a\\x.jpg"):
        with pytest.raises(kubernetes.client.ApiException) as refused:
            platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
                "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": "hostile-key"},
                "spec": {"source": {"prefix": "samples/", "keys": [key]}, "targets": [{"name": "t", "width": 8}]}})
        assert refused.value.status == 422


def test_output_beyond_the_limits_fails_before_any_io(platform):
    """Made with kubectl (the API refuses it with 422): one 16384x16384 upscaled fill is 268 MP."""
    name = "huge-output"
    platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {"source": {"prefix": "samples/"},
                 "targets": [{"name": "t", "width": 16384, "height": 16384, "fit": "fill", "upscale": True}]}})
    status = wait_for(lambda: (platform.resizejob(name).get("status") or {}).get("phase") == "Failed"
                      and platform.resizejob(name)["status"], 60, message=f"{name} to fail")
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "InvalidSpec" and "KRESIZE_MAX_OUTPUT_PIXELS" in failed["message"], failed
    assert platform.batch.list_namespaced_job(NAMESPACE, label_selector=f"kresize.dev/resizejob={name}").items == []
