"""The people-facing surfaces on a real cluster: the files a page at a time, live events through the Service, the
web page and offline docs, the `kresize` CLI, images by URL refused by the SSRF guard, and result reuse."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import CORPUS
from harness.procs import wait_for
from kresize_resizer.cores import memory_workers
from kubernetes.utils import parse_quantity

pytestmark = pytest.mark.e2e
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}
KRESIZE = Path(sys.executable).with_name("kresize")


def photos() -> list[Path]:
    return sorted((CORPUS / "photos").glob("*.jpg"))


def wait_summary(client: httpx.Client, name: str, timeout: float = 600) -> dict:
    return wait_for(lambda: (s := client.get(f"/v1/jobs/{name}").json())["phase"] in TERMINAL and s, timeout,
                    interval=1, message=f"job {name} to finish")


def sse(response: httpx.Response):
    event: dict = {}
    for line in response.iter_lines():
        if not line:
            if "event" in event:
                yield event["event"], json.loads(event.get("data", "null"))
                if event["event"] == "end":
                    return
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


def test_events_pages_and_reuse_through_the_service(cluster):
    targets = json.dumps([{"name": "thumb", "width": 160, "format": "webp"}])
    files = [("files", (p.name, p.read_bytes())) for p in photos()]
    with cluster.client() as client:
        response = client.post("/v1/jobs", files=files, data={"targets": targets, "reuse": "false"})
        assert response.status_code == 202, response.text
        name = response.json()["name"]
        try:
            with client.stream("GET", f"/v1/jobs/{name}/events", timeout=600) as stream:
                events = list(sse(stream))
            assert events[-1][0] == "end" and events[-1][1]["phase"] == "Succeeded"
            assert sorted(d["index"] for kind, d in events if kind == "file") == list(range(len(photos())))
            pages, cursor = [], None
            while True:
                page = client.get(f"/v1/jobs/{name}/files", params={"limit": 4, **({"cursor": cursor} if cursor
                                                                                    else {})}).json()
                pages.append(page["items"])
                cursor = page["next"]
                if cursor is None:
                    break
            assert [len(p) for p in pages[:-1]] == [4] * (len(pages) - 1)
            items = [item for page in pages for item in page]
            assert {i["state"] for i in items} == {"succeeded"} and len(items) == len(photos())
            assert httpx.get(items[0]["outputs"][0]["url"], timeout=60).status_code == 200
            # The same images and parameters again: every variant reused, no pod.
            again = client.post("/v1/jobs", files=files, data={"targets": targets}).json()["name"]
            summary = wait_summary(client, again)
            assert summary["phase"] == "Succeeded" and summary["progress"]["reused"] == len(photos())
        finally:
            client.delete(f"/v1/jobs/{name}")


def test_web_page_and_docs_are_served_without_a_cdn(cluster):
    page = httpx.get(f"{cluster.api_url}/", timeout=30)
    assert page.status_code == 200 and "kresize" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for docs in ("/docs", "/redoc"):
        html = httpx.get(f"{cluster.api_url}{docs}", timeout=30).text
        assert "cdn.jsdelivr" not in html and "unpkg" not in html, docs
    spec = httpx.get(f"{cluster.api_url}/openapi.json", timeout=30).json()
    assert "multipart/form-data" in spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]


def test_urls_to_cluster_internal_addresses_are_refused(cluster):
    with cluster.client() as client:
        response = client.post("/v1/jobs", json={"width": 32, "urls": [
            "http://169.254.169.254/latest/meta-data/", "http://kubernetes.default.svc/", "http://127.0.0.1:8080/"]})
    assert response.status_code == 415, response.text  # none of them could be fetched: nothing was created
    refusals = response.json()["error"]["files"]
    assert len(refusals) == 3 and not any(f["accepted"] for f in refusals)


@pytest.mark.skipif(not KRESIZE.exists(), reason=f"the kresize CLI is not installed beside {sys.executable}")
def test_cli_submit_wait_and_download(cluster, tmp_path):
    env = {**os.environ, "KRESIZE_API_URL": cluster.api_url, "KRESIZE_TOKEN": cluster.token}
    result = subprocess.run([str(KRESIZE), "--json", "submit", *map(str, photos()[:2]), "--width", "96",
                             "--wait"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    name = json.loads(result.stdout)["name"]
    try:
        download = subprocess.run([str(KRESIZE), "download", name, str(tmp_path)], capture_output=True,
                                  text=True, env=env, timeout=600)
        assert download.returncode == 0, download.stderr
        assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 2
    finally:
        subprocess.run([str(KRESIZE), "cancel", name], env=env, timeout=60, capture_output=True)


def test_a_resizer_pod_renders_one_image_per_cpu_its_limits_give(cluster):
    """The pod sizes its render workers from its cgroup (CPU quota, memory limit): what it logs matches what its
    Job's limits allow (its CPU limit rounded up, capped by cores.memory_workers at its memory limit)."""
    name = "e2e-render-workers"
    prefix = f"e2e/{name}/"
    for path in photos():
        cluster.s3.fput_object(cluster.bucket, f"{prefix}{path.name}", str(path))
    cluster.kubectl("delete", "resizejob", name, "--ignore-not-found", "--wait=true", check=False)
    cluster.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", cluster.namespace, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {"source": {"prefix": prefix}, "reuse": False, "targets": [{"name": "t", "width": 64}]}})
    try:
        wait_for(lambda: (cluster.resizejob(name).get("status") or {}).get("phase") in TERMINAL, 600, interval=2,
                 message=f"{name} to finish")
        pods = cluster.core.list_namespaced_pod(cluster.namespace,
                                                label_selector=f"batch.kubernetes.io/job-name={name}-resize").items
        assert pods
        limits = pods[0].spec.containers[0].resources.limits or {}
        cpus = math.ceil(parse_quantity(limits["cpu"])) if "cpu" in limits else None
        memory = str(int(parse_quantity(limits["memory"]))) if "memory" in limits else None
        log = cluster.core.read_namespaced_pod_log(pods[0].metadata.name, cluster.namespace)
        (logged,) = {int(n) for n in re.findall(r"rendering (\d+) images at once", log)}
        if cpus is not None:
            assert logged == memory_workers(memory, cpus), (limits, logged)
        assert logged >= 1
    finally:
        cluster.kubectl("delete", "resizejob", name, "--ignore-not-found", "--wait=true", check=False)
