"""kresize on a real cluster: kubectl apply, the HTTP API, restarts, pod deletion and RBAC."""

from __future__ import annotations

import io
import json
import secrets
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import CORPUS
from harness.examples import EXAMPLES, VALID_EXAMPLES, check_example_outputs
from harness.procs import wait_for
from PIL import Image

pytestmark = pytest.mark.e2e
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}



def wait_finished(cluster, name: str, timeout: float = 600) -> dict:
    return wait_for(lambda: (cluster.resizejob(name).get("status") or {}).get("phase") in TERMINAL
                    and cluster.resizejob(name)["status"], timeout, interval=2, message=f"ResizeJob {name} to finish")


def upload_samples(cluster, prefix: str, paths: list[Path]) -> None:
    for path in paths:
        cluster.s3.fput_object(cluster.bucket, f"{prefix}{path.name}", str(path))


def delete_resizejob(cluster, name: str) -> None:
    cluster.kubectl("delete", "resizejob", name, "--ignore-not-found", "--wait=true", check=False)


@pytest.mark.parametrize("example", VALID_EXAMPLES)
def test_kubectl_apply_example(cluster, samples, example):
    """Each example exactly as a user runs it after `make up`: kubectl apply -n <namespace> -f <example>."""
    path = EXAMPLES / f"{example}.yaml"
    manifest = yaml.safe_load(path.read_text())
    name = manifest["metadata"]["name"]
    delete_resizejob(cluster, name)
    cluster.kubectl("apply", "-f", str(path))
    try:
        status = wait_finished(cluster, name)
        check_example_outputs(cluster.s3, manifest, status, samples)
    finally:
        delete_resizejob(cluster, name)


def test_invalid_example_is_refused(cluster):
    result = cluster.kubectl("apply", "-f", str(EXAMPLES / "invalid.yaml"), check=False)
    assert result.returncode != 0
    assert "width" in result.stderr and "fit" in result.stderr, result.stderr


def test_upload_through_the_api(cluster):
    good = sorted((CORPUS / "photos").glob("*.jpg")) + sorted((CORPUS / "orientation").glob("*.jpg"))
    bad = sorted((CORPUS / "bad").iterdir())
    targets = [{"name": "thumb", "width": 200, "height": 200, "format": "webp"},
               {"name": "medium", "width": 800, "height": 800, "fit": "inside", "format": "jpeg"}]
    files = [("files", (p.name, p.read_bytes())) for p in good + bad]
    client = cluster.client()
    response = client.post("/v1/jobs", files=files, data={"targets": json.dumps(targets)})
    assert response.status_code == 202, response.text
    name = response.json()["name"]
    try:
        body = wait_for(lambda: (b := client.get(f"/v1/jobs/{name}").json())["phase"]
                        in TERMINAL and b, 600, interval=2, message=f"upload job {name}")
        assert body["phase"] == "PartiallyFailed"
        files, cursor = [], None
        while True:  # every page of the files
            page = client.get(f"/v1/jobs/{name}/files", params={"limit": 7, **({"cursor": cursor} if cursor else {})})
            files, cursor = files + page.json()["items"], page.json()["next"]
            if cursor is None:
                break
        by_name = {f["filename"]: f for f in files}
        for path in bad:
            assert by_name[path.name]["state"] == "failed" and by_name[path.name]["error"]
        for path in good:
            entry = by_name[path.name]
            assert entry["state"] == "succeeded", entry
            medium = entry["outputs"][1]
            data = httpx.get(medium["url"], timeout=60).content  # the presigned link works from outside
            with Image.open(io.BytesIO(data)) as image:
                assert image.size == (medium["width"], medium["height"])
        assert body["progress"]["succeeded"] == len(good)
        assert body["progress"]["total"] == body["progress"]["done"] == len(good) + len(bad)  # refused files count
    finally:
        client.close()
        delete_resizejob(cluster, name)


def big_job(cluster, name: str, copies: int = 4) -> int:
    sources = sorted((CORPUS / "orientation").glob("*.jpg")) + sorted((CORPUS / "photos").glob("*.jpg"))
    for copy in range(copies):
        upload_samples(cluster, f"e2e/{name}/{copy}/", sources)
    delete_resizejob(cluster, name)
    cluster.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", cluster.namespace, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {"source": {"prefix": f"e2e/{name}/"}, "parallelism": 2, "reuse": False,  # pods must really work
                 "targets": [{"name": "t", "width": 1024, "format": "avif"}]}})
    return len(sources) * copies


def test_operator_killed_mid_job(cluster):
    name = "e2e-operator-restart"
    total = big_job(cluster, name)
    try:
        wait_for(lambda: (cluster.resizejob(name).get("status") or {}).get("phase") == "Running", 180,
                 interval=2, message="Running")
        pods = cluster.core.list_namespaced_pod(cluster.namespace,
                                                label_selector="app.kubernetes.io/component=operator").items
        assert pods, "no operator pod found"
        for pod in pods:
            cluster.core.delete_namespaced_pod(pod.metadata.name, cluster.namespace, grace_period_seconds=0)
        status = wait_finished(cluster, name)
        assert status["phase"] == "Succeeded", status
        assert (status["total"], status["succeeded"], status["failed"]) == (total, total, 0)
        jobs = cluster.batch.list_namespaced_job(cluster.namespace, label_selector=f"kresize.dev/resizejob={name}")
        assert len(jobs.items) == 1
        keys = [o.object_name for o in cluster.s3.list_objects(cluster.bucket, prefix=status["results"]["outputPrefix"],
                                                                recursive=True)]
        assert len(keys) == len(set(keys)) == total
    finally:
        delete_resizejob(cluster, name)


def test_resizer_pod_deleted_mid_job(cluster):
    name = "e2e-pod-deleted"
    total = big_job(cluster, name)
    try:
        selector = f"kresize.dev/resizejob={name}"
        pods = cluster.core.list_namespaced_pod
        pod = wait_for(lambda: [p for p in pods(cluster.namespace, label_selector=selector).items
                                if p.status.phase == "Running"], 300, interval=0.5, message="a running resizer pod")[0]
        cluster.core.delete_namespaced_pod(pod.metadata.name, cluster.namespace, grace_period_seconds=0)
        status = wait_finished(cluster, name)
        assert status["phase"] == "Succeeded", status
        assert status["succeeded"] == total
        job = cluster.batch.read_namespaced_job(status["jobName"], cluster.namespace)
        assert (job.status.failed or 0) >= 1  # the deleted pod counted as a failed attempt, then retried
    finally:
        delete_resizejob(cluster, name)


ALLOWED = {
    "kresize-operator": [("create", "jobs.batch"), ("patch", "resizejobs.kresize.dev/status"),
                         ("watch", "resizejobs.kresize.dev"), ("create", "events"), ("list", "pods"),
                         ("list", "resourcequotas"), ("delete", "jobs.batch")],
    "kresize-api": [("create", "resizejobs.kresize.dev"), ("get", "resizejobs.kresize.dev"),
                    ("list", "resizejobs.kresize.dev"), ("watch", "resizejobs.kresize.dev"),
                    ("delete", "resizejobs.kresize.dev")],
    "kresize-resizer": [],
}
DENIED = {
    "kresize-operator": [("delete", "pods"), ("list", "secrets"), ("get", "secrets/kresize-s3"),
                         ("create", "deployments.apps"), ("list", "nodes"), ("patch", "pods")],
    "kresize-api": [("patch", "resizejobs.kresize.dev"), ("create", "jobs.batch"), ("get", "secrets")],
    "kresize-resizer": [("get", "pods"), ("list", "resizejobs.kresize.dev"), ("get", "secrets"),
                        ("create", "events")],
}


@pytest.mark.parametrize("account", sorted(ALLOWED))
def test_rbac_least_privilege(cluster, account):
    who = f"system:serviceaccount:{cluster.namespace}:{account}"
    for verb, resource in ALLOWED[account]:
        result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", check=False)
        assert result.stdout.strip() == "yes", f"{account} should be able to {verb} {resource}"
    for verb, resource in DENIED[account]:
        result = cluster.kubectl("auth", "can-i", verb, resource, f"--as={who}", check=False)
        assert result.stdout.strip() == "no", f"{account} must not be able to {verb} {resource}"


def test_api_needs_a_token_and_keeps_tenants_apart(cluster):
    """401 without a token; a tenant added to the tokens Secret (as NOTES.txt says) sees only its own jobs."""
    with cluster.client("") as anonymous:
        assert anonymous.get("/v1/jobs").status_code == 401
    assert httpx.get(f"{cluster.api_url}/healthz", timeout=30).status_code == 200
    tenant_token = secrets.token_hex(24)
    cluster.kubectl("patch", "secret", "kresize-api-tokens", "--type", "merge",
                    "-p", json.dumps({"stringData": {"e2e-tenant": tenant_token}}))
    admin_job = "e2e-admin-only"
    delete_resizejob(cluster, admin_job)
    cluster.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", cluster.namespace, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": admin_job},
        "spec": {"source": {"prefix": "samples/", "keys": ["landscape.jpg"]}, "targets": [{"name": "t", "width": 8}]}})
    try:
        with cluster.client(tenant_token) as tenant, cluster.client() as admin:
            # The kubelet refreshes mounted Secrets within about a minute.
            wait_for(lambda: tenant.get("/v1/jobs").status_code == 200, 180, interval=5, message="the new token")
            assert tenant.get(f"/v1/jobs/{admin_job}").status_code == 404
            assert admin.get(f"/v1/jobs/{admin_job}").status_code == 200
    finally:
        delete_resizejob(cluster, admin_job)
        cluster.kubectl("patch", "secret", "kresize-api-tokens", "--type", "json",
                        "-p", '[{"op": "remove", "path": "/data/e2e-tenant"}]', check=False)


def test_storage_policy_and_hostile_keys(cluster):
    """A ResizeJob that would read other tenants' uploads fails Forbidden; a hostile key never gets in."""
    name = "e2e-forbidden"
    delete_resizejob(cluster, name)
    cluster.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", cluster.namespace, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {"source": {"prefix": "originals/"}, "targets": [{"name": "t", "width": 8}]}})
    try:
        status = wait_finished(cluster, name, timeout=120)
        failed = next(c for c in status["conditions"] if c["type"] == "Failed")
        assert (status["phase"], failed["reason"]) == ("Failed", "Forbidden"), status
        assert cluster.batch.list_namespaced_job(cluster.namespace,
                                                 label_selector=f"kresize.dev/resizejob={name}").items == []
    finally:
        delete_resizejob(cluster, name)
    for key in ("../etc/passwd", ".hidden/a.jpg", "a%2e%2e/b.jpg"):
        manifest = json.dumps({"apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob",
                               "metadata": {"name": "e2e-hostile-key"},
                               "spec": {"source": {"prefix": "samples/", "keys": [key]},
                                        "targets": [{"name": "t", "width": 8}]}})
        result = subprocess.run([cluster.kubectl_path, "-n", cluster.namespace, "apply", "-f", "-"], input=manifest,
                                capture_output=True, text=True, timeout=60)
        assert result.returncode != 0 and "keys" in result.stderr, (key, result.stderr)


@pytest.mark.parametrize(("service", "metric"), [("kresize-operator-metrics", "kresize_resizejobs"),
                                                 ("kresize-api-metrics", "kresize_upload_bytes_total")])
def test_metrics_are_served_in_the_cluster(cluster, service, metric):
    """Scraped through the apiserver's service proxy, as an in-cluster Prometheus would reach them."""
    result = cluster.kubectl("get", "--raw",
                             f"/api/v1/namespaces/{cluster.namespace}/services/{service}:metrics/proxy/metrics")
    assert any(line.startswith(metric) for line in result.stdout.splitlines()), result.stdout[:2000]
