"""Status reads at scale: `GET /v1/jobs/{name}` (the summary) and `GET /v1/jobs/{name}/files?limit=100` (a page)
for jobs of 100, 1,000 and 10,000 files, each beside `GET /healthz` measured in the same run, under 20 concurrent
clients. Goal: the summary and a page of 100 stay within 3x of /healthz's median latency at every size.

The jobs are what the operator and the resizer leave in S3 and in the ResizeJob's status (shard manifests, result
files, the checkpoints and heartbeat of a shard still running, four variants per image), written directly: the
API reads them exactly as it reads real ones. The real API runs under its pod's rules, against SeaweedFS S3 and
the apiserver emulator.

    python bench/bench_api_status.py [sizes...]
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path

import httpx
import kubernetes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "operator"))

from backends import start_backends  # noqa: E402
from conftest import BUCKET, NAMESPACE, start_component  # noqa: E402
from kresize_api.files import encode_cursor  # noqa: E402  (the cursor is opaque to clients, not to the bench)
from kresize_common import layout  # noqa: E402
from kresize_common.ranges import compress_ranges  # noqa: E402
from kresize_common.records import ImageRef, ImageResult, ShardManifest, Variant, heartbeat_json  # noqa: E402
from kresize_common.s3 import put_json  # noqa: E402
from kresize_operator.config import Sharding  # noqa: E402
from kresize_operator.planning import plan_shards  # noqa: E402

CLIENTS = 20
REQUESTS_PER_CLIENT = 25
ROUNDS = 3
GOAL = 3.0
TARGETS = ("thumb", "small", "medium", "large")


def make_job(custom, s3, size: int) -> str:
    """A job of `size` images: every shard finished but the last, which is half done and has a live pod."""
    name = f"status-{size}"
    job = custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob",
        "metadata": {"name": name, "labels": {"kresize.dev/tenant": "admin"}},
        "spec": {"source": {"prefix": f"bench/{name}/"}, "targets": [{"name": t, "width": 100} for t in TARGETS]}})
    work = layout.work_prefix(NAMESPACE, name, job["metadata"]["uid"])
    plan = plan_shards(size, 8, 10, Sharding())
    output = layout.default_output_prefix(NAMESPACE, name)
    for index in range(plan.shards):
        start, end = plan.shard_bounds(index)
        images = [ImageRef(f"bench/{name}/{i:06d}.jpg", f"{i:06d}") for i in range(start, end)]
        put_json(s3, BUCKET, layout.shard_key(work, index), ShardManifest(
            index, BUCKET, BUCKET, output, tuple({"name": t} for t in TARGETS), {}, tuple(images)).to_json())
        records = [ImageResult.succeeded(image.key, [
            Variant(t, layout.output_key(output, image.id, t, "jpg"), 100, 75, "jpeg", 4000) for t in TARGETS])
            for image in images]
        if index < plan.shards - 1:
            put_json(s3, BUCKET, layout.results_key(work, index), [r.to_json() for r in records])
        else:  # running: half its images checkpointed in batches of 10, its pod's heartbeat fresh
            half = records[:len(records) // 2]
            for batch in range(0, len(half), 10):
                put_json(s3, BUCKET, layout.checkpoint_key(work, index, batch // 10),
                         [r.to_json() for r in half[batch:batch + 10]])
            put_json(s3, BUCKET, layout.heartbeat_key(work, index), heartbeat_json(time.time() + 3600))
    finished = plan.shard_size * (plan.shards - 1)
    custom.patch_namespaced_custom_object_status("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", name, {
        "status": {"phase": "Running", "total": size, "succeeded": finished, "failed": 0,
                   "progress": f"{finished}/{size}", "shards": plan.shards, "shardSize": plan.shard_size,
                   "countedIndexes": compress_ranges(set(range(plan.shards - 1))), "jobName": f"{name}-resize",
                   "results": {"bucket": BUCKET, "prefix": layout.results_prefix(work), "outputBucket": BUCKET,
                               "outputPrefix": output}}})
    return name


def latencies(url: str, token: str, path: str) -> tuple[list[float], int]:
    """Per-request latency (s) of CLIENTS concurrent clients, each sending REQUESTS_PER_CLIENT requests."""
    found: list[float] = []
    sizes: list[int] = []
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            for _ in range(REQUESTS_PER_CLIENT):
                started = time.perf_counter()
                response = http.get(path)
                elapsed = time.perf_counter() - started
                assert response.status_code == 200, (path, response.status_code, response.text[:300])
                with lock:
                    found.append(elapsed)
                    sizes.append(len(response.content))
    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found, int(statistics.median(sizes))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(sizes: list[int]) -> int:
    backends = start_backends("status")
    token, s3 = backends.token, backends.s3_server.client()
    custom = kubernetes.client.CustomObjectsApi(backends.api)
    api = start_component("api", backends.s3_server, backends.kubeconfig, backends.work / "api.log")
    ok = True
    try:
        print(f"status reads: {CLIENTS} concurrent clients x {REQUESTS_PER_CLIENT} requests, {ROUNDS} interleaved "
              f"rounds; latency in ms; ratio = median / /healthz's median in the same round (goal <= {GOAL}x)")
        print(f"{'files':>6} {'request':<30} {'p50':>7} {'p95':>7} {'p99':>7} {'bytes':>8} {'x healthz':>10}")
        for size in sizes:
            name = make_job(custom, s3, size)
            plan = plan_shards(size, 8, 10, Sharding())
            middle, running = encode_cursor(size // 2), encode_cursor(plan.shard_size * (plan.shards - 1))
            paths = {"healthz": "/healthz", "summary": f"/v1/jobs/{name}",
                     "page of 100 (first)": f"/v1/jobs/{name}/files?limit=100",
                     "page of 100 (middle)": f"/v1/jobs/{name}/files?limit=100&cursor={middle}",
                     "page of 100 (running shard)": f"/v1/jobs/{name}/files?limit=100&cursor={running}"}
            with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
                cold = {}  # the first read of a page, nothing cached: what one client polling a new job costs
                for label in ("page of 100 (first)", "page of 100 (middle)"):
                    started = time.perf_counter()
                    assert http.get(paths[label]).status_code == 200
                    cold[label] = time.perf_counter() - started
            samples: dict[str, list[float]] = {label: [] for label in paths}
            body: dict[str, int] = {}
            for _ in range(ROUNDS):  # interleaved: a slow moment of the machine hits every request alike
                for label, path in paths.items():
                    found, body[label] = latencies(api.url, token, path)
                    samples[label] += found
            base = statistics.median(samples["healthz"])
            for label, found in samples.items():
                ratio = statistics.median(found) / base
                within = label == "healthz" or ratio <= GOAL
                ok = ok and within
                print(f"{size:>6} {label:<30} {statistics.median(found) * 1000:>7.1f} "
                      f"{percentile(found, 0.95) * 1000:>7.1f} {percentile(found, 0.99) * 1000:>7.1f} "
                      f"{body[label]:>8} {ratio:>9.2f}x{'' if within else '  OVER GOAL'}")
            for label, seconds in cold.items():
                print(f"{size:>6} {label + ', cold':<30} {seconds * 1000:>7.1f} {'(one request, nothing cached)':>34}")
        return 0 if ok else 1
    finally:
        api.stop()
        backends.stop()


if __name__ == "__main__":
    sys.exit(main([int(a) for a in sys.argv[1:]] or [100, 1000, 10000]))
