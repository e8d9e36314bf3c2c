"""Prometheus metrics of the API and the operator, scraped on the platform before and after a job; JSON logs."""

from __future__ import annotations

import json

import httpx
import pytest
from conftest import CORPUS
from harness.images import noise_png
from harness.procs import wait_for
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.slow


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics page, keyed by name and sorted labels."""
    text = httpx.get(url, timeout=30).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_counters_match_the_job(platform):
    good = [(p.name, p.read_bytes()) for p in sorted((CORPUS / "photos").glob("*.jpg"))[:3]]
    good.append(("noise.png", noise_png(8)))
    bad = [("empty.jpg", b""), ("text.jpg", b"just some text, not an image")]
    api_before, op_before = scrape(platform.api_component.metrics_url), scrape(platform.operator.metrics_url)
    with platform.client() as client:
        response = client.post("/v1/jobs", files=[("files", f) for f in good + bad], data={"width": "32"})
        assert response.status_code == 202, response.text
        name = response.json()["name"]
        wait_for(lambda: client.get(f"/v1/jobs/{name}").json()["phase"] in {"Succeeded", "PartiallyFailed"}, 240,
                 message=f"{name} to finish")
    api_after = scrape(platform.api_component.metrics_url)

    def op_after_counts() -> dict | None:
        samples = scrape(platform.operator.metrics_url)
        return samples if value(samples, "kresize_images_total", status="succeeded") >= \
            value(op_before, "kresize_images_total", status="succeeded") + len(good) else None

    op_after = wait_for(op_after_counts, 30, message="the operator's counters")

    def delta(before, after, name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    # API: one accepted upload, its bytes, and the two files it refused by reason.
    assert delta(api_before, api_after, "http_requests_total", handler="/v1/jobs", method="POST", status="2xx") == 1
    assert delta(api_before, api_after, "kresize_upload_bytes_total") == sum(len(d) for _, d in good + bad)
    assert delta(api_before, api_after, "kresize_rejected_files_total", reason="empty") == 1
    assert delta(api_before, api_after, "kresize_rejected_files_total", reason="unrecognised") == 1
    assert delta(api_before, api_after, "http_request_duration_seconds_count", handler="/v1/jobs", method="POST") \
        >= 1
    # Operator: every image counted once, the job by phase, the handlers timed.
    assert delta(op_before, op_after, "kresize_images_total", status="succeeded") == len(good)
    assert delta(op_before, op_after, "kresize_images_total", status="failed") == 0  # refused at upload: API's
    assert value(op_after, "kresize_resizejobs", phase="Succeeded") >= 1
    assert delta(op_before, op_after, "kresize_image_duration_seconds_count") == len(good)  # from the records
    assert delta(op_before, op_after, "kresize_shard_duration_seconds_count") >= 1
    assert value(op_after, "kresize_reconcile_duration_seconds_count", handler="start") >= 1
    assert value(op_after, "kresize_reconcile_duration_seconds_count", handler="schedule") >= 1
    assert value(op_after, "kresize_pod_budget") == 2  # the platform's operator.maxPods
    assert value(op_after, "kresize_queue_length") == 0


def test_logs_are_json_lines_and_operator_lines_name_their_resizejob(platform):
    with platform.client() as client:
        response = client.post("/v1/jobs", files=[("files", ("a.png", noise_png(8)))], data={"width": "4"})
        name = response.json()["name"]
        wait_for(lambda: client.get(f"/v1/jobs/{name}").json()["phase"] == "Succeeded", 120, message=name)
    for component in (platform.api_component, platform.operator):
        lines = [line for line in component.program.log.read_text().splitlines() if line.strip()]
        records = [json.loads(line) for line in lines]  # every line is one JSON object
        assert all("message" in r for r in records)
    about_job = [json.loads(line) for line in platform.operator.program.log.read_text().splitlines()
                 if name in line]
    assert about_job and all(r["resizejob"]["name"] in (name, f"{name}-resize") for r in about_job
                             if "resizejob" in r)  # the ResizeJob's lines, or its Job's
    assert any(r.get("resizejob", {}).get("kind") == "ResizeJob" for r in about_job)
    # The scheduler's lines (phase changes) name their ResizeJob too.
    assert any(r["message"].startswith(f"{name} is Running") and r["resizejob"]["name"] == name for r in about_job)
    assert not any(r["message"].startswith("Handler 'observe_") for r in about_job)  # one per watch event: dropped

