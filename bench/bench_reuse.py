"""Result reuse: a job of 100 images through the API, then the same images with the same target parameters
again (target names changed): the upload's time to the 202, and the job's from the 202 to its terminal phase.
Goal: the repeated job finishes at least 10x faster than the first (its images are not resized again: their
variants are copied, and no pod starts). The upload (100 photos, about 50 MB) costs the same both times; it is shown
beside the job, and the ratio with it too.

The whole platform on loopback: SeaweedFS S3, the apiserver emulator, the real operator and API under their pods'
rules, and the Job runner starting real resizer pods (under bubblewrap, as in the tests), with the chart's
default budget. Each round uses 100 images no earlier round used (corpus photos with a round-specific trailer).

    python bench/bench_reuse.py [rounds]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from backends import start_backends  # noqa: E402
from conftest import CORPUS, NAMESPACE, start_component  # noqa: E402
from harness.jobs import JobRunner  # noqa: E402

IMAGES = 100
GOAL = 10.0
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}
TARGETS = [{"name": "web", "width": 1280, "fit": "inside", "format": "jpeg"},
           {"name": "thumb", "width": 320, "height": 240, "format": "webp"},
           {"name": "icon", "width": 64, "height": 64, "format": "jpeg"}]


def images(round_: int) -> list[tuple[str, bytes]]:
    """100 distinct JPEGs: the corpus photos, each with bytes after its end marker that decoders ignore."""
    photos = sorted((CORPUS / "photos").glob("*.jpg"))
    return [(f"{n:03d}.jpg", photos[n % len(photos)].read_bytes() + f"kresize-bench {round_} {n}".encode())
            for n in range(IMAGES)]


def run_job(client: httpx.Client, files: list[tuple[str, bytes]], targets: list[dict],
            ) -> tuple[float, float, dict]:
    """(seconds the upload took until 202, seconds from 202 to the terminal phase, the final summary)."""
    started = time.perf_counter()
    response = client.post("/v1/jobs", files=[("files", (n, d, "image/jpeg")) for n, d in files],
                           data={"targets": json.dumps(targets)})
    assert response.status_code == 202, response.text
    accepted = time.perf_counter()
    name = response.json()["name"]
    while True:
        summary = client.get(f"/v1/jobs/{name}").json()
        if summary["phase"] in TERMINAL:
            return accepted - started, time.perf_counter() - accepted, summary
        time.sleep(0.05)


def main(rounds: int) -> int:
    backends = start_backends("reuse")
    s3_server, kubeconfig, work, token = backends.s3_server, backends.kubeconfig, backends.work, backends.token
    runner = JobRunner(kubeconfig, NAMESPACE, work / "pods").start()
    operator = start_component("operator", s3_server, kubeconfig, work / "operator.log", operator={
        "gc": {"intervalSeconds": 0}})
    api = start_component("api", s3_server, kubeconfig, work / "api.log")
    renamed = [{**t, "name": f"{t['name']}-again"} for t in TARGETS]
    rows: dict[str, list[tuple[float, float]]] = {"first": [], "repeated": []}
    try:
        with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=600) as client:
            for round_ in range(rounds):
                files = images(round_)
                *first, summary = run_job(client, files, TARGETS)
                assert summary["phase"] == "Succeeded" and summary["progress"]["reused"] == 0, summary
                *again, repeated = run_job(client, files, renamed)
                assert repeated["phase"] == "Succeeded" and repeated["progress"]["reused"] == IMAGES, repeated
                rows["first"].append((first[0], first[1]))
                rows["repeated"].append((again[0], again[1]))
                print(f"  round {round_ + 1}: first {sum(first):6.2f} s, repeated {sum(again):6.2f} s", flush=True)
    finally:
        api.stop()
        operator.stop()
        runner.stop()
        backends.stop()
    upload = {k: statistics.median(u for u, _ in v) for k, v in rows.items()}
    job = {k: statistics.median(j for _, j in v) for k, v in rows.items()}
    speedup = job["first"] / job["repeated"]
    print(f"\nresult reuse: a job of {IMAGES} images x {len(TARGETS)} targets, median of {rounds} rounds; the job "
          f"runs from the 202 to its terminal phase (the upload before it is the same bytes both times)")
    print(f"{'job':<34} {'upload':>8} {'job':>8} {'total':>8}")
    for label, key in (("first (resized)", "first"), ("repeated (every variant reused)", "repeated")):
        print(f"{label:<34} {upload[key]:>7.2f}s {job[key]:>7.2f}s {upload[key] + job[key]:>7.2f}s")
    print(f"repeated job is {speedup:.1f}x faster than the first (goal >= {GOAL:.0f}x): "
          f"{'met' if speedup >= GOAL else 'NOT MET'}; with the uploads, "
          f"{(upload['first'] + job['first']) / (upload['repeated'] + job['repeated']):.1f}x")
    return 0 if speedup >= GOAL else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2))
