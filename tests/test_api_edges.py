"""The API at its edges: limits (413), and S3 or the Kubernetes API unreachable (503, nothing left behind)."""

from __future__ import annotations

import httpx
import pytest
from conftest import BUCKET, NAMESPACE, create_s3_secret, start_component
from harness.images import noise_png
from harness.procs import free_port, wait_for
from test_platform import TERMINAL

pytestmark = pytest.mark.slow


def admin(platform) -> dict[str, str]:
    return {"Authorization": f"Bearer {platform.tokens['admin']}"}


def resizejob_names(platform) -> set[str]:
    items = platform.custom.list_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs")
    return {item["metadata"]["name"] for item in items["items"]}


def test_s3_unreachable(platform, s3_server, kube, tmp_path):
    api = start_component("api", s3_server, kube[1], tmp_path / "api.log",
                          s3={"endpoint": f"127.0.0.1:{free_port()}"})
    url = api.url
    try:
        before = resizejob_names(platform)
        response = httpx.post(f"{url}/v1/jobs", headers=admin(platform), files=[("files", ("a.png", noise_png()))],
                              data={"width": "10"}, timeout=60)
        assert response.status_code == 503, response.text
        assert "unavailable" in response.json()["error"]["message"]
        assert resizejob_names(platform) == before
        ready = httpx.get(f"{url}/readyz", timeout=60)
        assert ready.status_code == 503 and "s3" in ready.json()["problems"]
        # A job's summary needs no S3 (it is the ResizeJob's status); its files do, and a read while S3 is down
        # says so, without claiming a write was undone.
        with platform.client() as client:
            name = client.post("/v1/jobs", files=[("files", ("b.png", noise_png(20)))], data={"width": "8"}
                               ).json()["name"]
            wait_for(lambda: client.get(f"/v1/jobs/{name}").json()["phase"] in TERMINAL, 120, message=name)
        assert httpx.get(f"{url}/v1/jobs/{name}", headers=admin(platform), timeout=60).status_code == 200
        read = httpx.get(f"{url}/v1/jobs/{name}/files", headers=admin(platform), timeout=60)
        assert read.status_code == 503, read.text
        assert read.json()["error"]["message"].startswith("S3 is unavailable, try again later"), read.text
    finally:
        api.stop()


def test_kubernetes_unreachable_leaves_no_orphans(platform, s3_server, kube, tmp_path):
    dead = tmp_path / "kubeconfig"
    dead.write_text(kube[1].read_text().replace(
        kube[1].read_text().split("server: ")[1].split()[0], f"http://127.0.0.1:{free_port()}"))
    api = start_component("api", s3_server, kube[1], tmp_path / "api.log", program_kubeconfig=dead)
    url = api.url
    try:
        before = {o.object_name for o in platform.s3.list_objects(BUCKET, recursive=True)}
        response = httpx.post(f"{url}/v1/jobs", headers=admin(platform), files=[("files", ("a.png", noise_png()))],
                              data={"width": "10"}, timeout=60)
        assert response.status_code == 503, response.text
        after = {o.object_name for o in platform.s3.list_objects(BUCKET, recursive=True)}
        # The upload record was removed again. The original stays: it is content-addressed and may be shared
        # with another request; unreferenced originals are collected later (tests/test_gc.py).
        assert {key.split("/")[0] for key in after - before} <= {"originals"}
        assert "nothing was created" in response.json()["error"]["message"]
        ready = httpx.get(f"{url}/readyz", timeout=60)
        assert ready.status_code == 503 and "kubernetes" in ready.json()["problems"]
    finally:
        api.stop()


def test_operator_reports_unreachable_s3_and_retries(platform, s3_server, kube, tmp_path):
    """An operator whose S3 is down keeps the job Pending with a condition that says why."""
    create_s3_secret(platform.api, "s3down", s3_server)
    operator = start_component("operator", s3_server, kube[1], tmp_path / "operator.log", namespace="s3down",
                               s3={"endpoint": f"127.0.0.1:{free_port()}"}).program
    try:
        platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", "s3down", "resizejobs", {
            "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": "waits"},
            "spec": {"source": {"prefix": "x/"}, "targets": [{"name": "t", "width": 10}]}})

        def pending():
            status = platform.custom.get_namespaced_custom_object(
                "kresize.dev", "v1alpha1", "s3down", "resizejobs", "waits").get("status") or {}
            return status if status.get("phase") == "Pending" else None
        status = wait_for(pending, 60, message=f"Pending\n{operator.tail()}")
        (condition,) = status["conditions"]
        assert (condition["type"], condition["status"], condition["reason"]) == ("Progressing", "False",
                                                                                 "S3Unavailable")
        assert "cannot prepare the work in S3" in condition["message"]
        assert s3_server.secret_key not in operator.log.read_text()
        assert platform.batch.list_namespaced_job("s3down").items == []
    finally:
        operator.stop()


def test_size_limits_answer_413_and_create_nothing(platform, s3_server, kube, tmp_path):
    api = start_component("api", s3_server, kube[1], tmp_path / "api.log",
                          limits={"maxFileBytes": 2000, "maxRequestBytes": 100000})
    url = api.url
    try:
        before = resizejob_names(platform)
        big_file = httpx.post(f"{url}/v1/jobs", headers=admin(platform), files=[("files", ("a.png", noise_png(40)))],
                              data={"width": "10"})
        assert big_file.status_code == 413 and "KRESIZE_MAX_FILE_BYTES" in big_file.text
        big_request = httpx.post(f"{url}/v1/jobs", headers=admin(platform),
                                 files=[("files", (f"{i}.png", noise_png())) for i in range(200)],
                                 data={"width": "10"})
        assert big_request.status_code == 413 and "KRESIZE_MAX_REQUEST_BYTES" in big_request.text
        assert resizejob_names(platform) == before
    finally:
        api.stop()
