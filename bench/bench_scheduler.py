"""The scheduler at scale, on the emulator platform: the real operator (its pod's rules, the chart's env), a real
S3 server, and the Job runner playing the Job controller with a fast stand-in resizer (bench/standin_resizer.py:
the real pod program, 0.1 s of sleep per image instead of Pillow).

1. 500 ResizeJobs created at once (budget 10): CR-to-Queued/Running latency p50/p99, operator CPU seconds and
   peak RSS, errors. Goal: p99 <= 500 ms.
2. Three equal jobs share a budget of 6, a fourth arrives, the smallest finishes first: Jain's fairness index
   over time (on allocations normalised by the ideal max-min share; goal >= 0.95), the newcomer's time to its
   first pod and to its share (goal <= 1 tick, 2 s), budget utilisation while demand exceeds it (goal >= 95% of
   pod-seconds), Job-finished-to-final-phase latency (goal p99 <= 1 s), images made twice (goal 0).
3. A 100,000-image ResizeJob from a prefix: plan time, ResizeJob size as stored (goal < 100 KB), operator peak
   RSS (goal < 200 MB); and a ResizeJob naming 1,000 keys (the most a spec may list), as stored.

    python bench/bench_scheduler.py
"""

from __future__ import annotations

import collections
import concurrent.futures
import io
import json
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import kubernetes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "operator"))

from backends import start_backends  # noqa: E402
from bench_api_memory import python_pid, reset_peak, rss_mb  # noqa: E402
from conftest import NAMESPACE, start_component  # noqa: E402
from harness.jobs import JobRunner  # noqa: E402
from kresize_common.ranges import expand_ranges  # noqa: E402
from kresize_operator.fairshare import Demand, jain_index, share  # noqa: E402

BUCKET = "kresize"
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}
TICK = 2.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, in clock ticks of 1/100 s


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


class Watcher:
    """When each ResizeJob first reached a phase, and when each Job first finished (receipt times)."""

    def __init__(self, api: kubernetes.client.ApiClient):
        self.api = api
        self.phases: dict[str, dict[str, float]] = collections.defaultdict(dict)
        self.job_done: dict[str, float] = {}
        self.completed: dict[str, int] = {}  # Job -> indexes completed
        self.parallelism: dict[str, int] = {}  # Job -> parallelism as the scheduler set it (0: suspended)
        self.status: dict[str, dict] = {}
        self._stop = threading.Event()
        for target in (self._rjs, self._jobs):
            threading.Thread(target=self._forever, args=(target,), daemon=True).start()

    def _forever(self, watch) -> None:
        while not self._stop.is_set():
            try:
                watch()
            except Exception:  # noqa: BLE001 - the apiserver going away at the end; else watch again
                time.sleep(0.5)

    def stop(self) -> None:
        self._stop.set()

    def _rjs(self) -> None:
        custom = kubernetes.client.CustomObjectsApi(self.api)
        while not self._stop.is_set():
            for event in kubernetes.watch.Watch().stream(custom.list_namespaced_custom_object, "kresize.dev",
                                                         "v1alpha1", NAMESPACE, "resizejobs", timeout_seconds=60):
                now = time.monotonic()
                obj = event["object"]
                status = obj.get("status") or {}
                self.status[obj["metadata"]["name"]] = status
                if status.get("phase"):
                    self.phases[obj["metadata"]["name"]].setdefault(status["phase"], now)

    def _jobs(self) -> None:
        batch = kubernetes.client.BatchV1Api(self.api)
        while not self._stop.is_set():
            for event in kubernetes.watch.Watch().stream(batch.list_namespaced_job, NAMESPACE, timeout_seconds=60):
                job = event["object"]
                status = job.status or kubernetes.client.V1JobStatus()
                self.completed[job.metadata.name] = len(expand_ranges(status.completed_indexes))
                self.parallelism[job.metadata.name] = 0 if job.spec.suspend else (job.spec.parallelism or 0)
                if any(c.type in ("Complete", "Failed") and c.status == "True" for c in (status.conditions or [])):
                    self.job_done.setdefault(job.metadata.name, time.monotonic())


def create(custom, name: str, spec: dict) -> None:
    custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name}, "spec": spec})


def put_tiny(s3, keys: list[str]) -> None:
    with concurrent.futures.ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: s3.put_object(BUCKET, k, io.BytesIO(b"x"), 1), keys))


def scenario_many(custom, watcher: Watcher, pid: int, s3) -> list[str]:
    put_tiny(s3, [f"bench/many/{i}.jpg" for i in range(4)])
    reset_peak(pid)
    cpu0 = cpu_seconds(pid)
    names = [f"many-{i:03d}" for i in range(500)]
    created: dict[str, float] = {}

    def one(name: str) -> None:
        created[name] = time.monotonic()
        create(custom, name, {"source": {"prefix": "bench/many/"}, "targets": [{"name": "t", "width": 10}]})

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(pool.map(one, names))
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not all({"Queued", "Running"} & set(watcher.phases[n]) for n in names):
        time.sleep(0.2)
    latencies = [(min(t for p, t in watcher.phases[n].items() if p in ("Queued", "Running")) - created[n]) * 1000
                 for n in names if {"Queued", "Running"} & set(watcher.phases[n])]
    errors = sum(1 for n in names if "Failed" in watcher.phases[n]) + (len(names) - len(latencies))
    cpu = cpu_seconds(pid) - cpu0
    peak = rss_mb(pid, "VmHWM")
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    rows = [
        "1. 500 ResizeJobs created at once (budget 10 pods)",
        f"   CR-to-Queued/Running latency  p50 {p50:7.0f} ms   p99 {p99:7.0f} ms   p99/goal(500 ms) {p99 / 500:5.2f}x",
        f"   operator CPU {cpu:6.1f} s ({cpu / len(names) * 1000:.1f} ms a job)   peak RSS {peak:5.0f} MB   "
        f"errors {errors}",
    ]
    for name in names:  # out of the way of the next scenario (their finalizers run the cleanup)
        custom.delete_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", name)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and custom.list_namespaced_custom_object(
            "kresize.dev", "v1alpha1", NAMESPACE, "resizejobs")["items"]:
        time.sleep(0.5)
    return rows


def scenario_fairness(custom, watcher: Watcher, runner: JobRunner, s3, budget: int) -> list[str]:
    sizes = {"fair-a": 120, "fair-b": 240, "fair-c": 240, "fair-d": 240}
    for name, count in sizes.items():
        put_tiny(s3, [f"bench/{name}/{i:04d}.jpg" for i in range(count)])
    spec = {"targets": [{"name": "t", "width": 10}], "parallelism": budget}
    start = time.monotonic()
    for name in ("fair-a", "fair-b", "fair-c"):
        create(custom, name, {**spec, "source": {"prefix": f"bench/{name}/"}})
    samples: list[tuple[float, dict[str, int], dict[str, int], dict[str, int]]] = []  # (t, pods, demand, ideal)
    d_created = None
    given: list[dict[str, int]] = []  # the scheduler's decisions (Job parallelism) at each sample
    while True:
        now = time.monotonic()
        if d_created is None and now - start >= 4:
            d_created = time.monotonic()
            create(custom, "fair-d", {**spec, "source": {"prefix": "bench/fair-d/"}})
        pods = {n: len(runner.running(f"{n}-resize")) for n in sizes}
        demand = {}
        for n in sizes:
            status = watcher.status.get(n) or {}
            if status.get("phase") in ("Queued", "Running"):
                demand[n] = max(0, status.get("shards", 0) - watcher.completed.get(f"{n}-resize", 0))
        runnable = {n: d for n, d in demand.items() if d > 0}
        ideal = share(budget, [Demand(n, d) for n, d in runnable.items()]).pods
        samples.append((now - start, pods, demand, ideal))
        given.append({n: watcher.parallelism.get(f"{n}-resize", 0) for n in sizes})
        if d_created and all((watcher.status.get(n) or {}).get("phase") in TERMINAL for n in sizes):
            break
        if now - start > 600:
            break
        time.sleep(0.1)
    # Jain's index on allocations normalised by the ideal share (Jain 1984: x_i = T_i / O_i), while 2+ jobs run.
    jains, decided, used, offered = [], [], 0.0, 0.0
    for (_, pods, demand, ideal), set_now in zip(samples, given, strict=True):
        runnable = {n: d for n, d in demand.items() if d > 0}
        if len(runnable) >= 2:
            jains.append(jain_index([pods[n] / ideal[n] for n in ideal if ideal[n]]))
            decided.append(jain_index([min(set_now[n], demand[n]) / ideal[n] for n in ideal if ideal[n]]))
        if sum(runnable.values()) >= budget:
            used += sum(pods.values())
            offered += budget
    first_pod = next((t for t, pods, _, _ in samples if d_created and t >= d_created - start
                      and pods["fair-d"] >= 1), None)
    to_share = next((t for t, pods, _, ideal in samples if d_created and t >= d_created - start
                     and "fair-d" in ideal and pods["fair-d"] >= ideal["fair-d"]), None)
    fair_d = next((ideal["fair-d"] for t, _, _, ideal in samples if t == to_share), 0)
    finals = [(watcher.phases[n][p] - watcher.job_done[f"{n}-resize"]) * 1000 for n in sizes
              for p in TERMINAL if p in watcher.phases[n] and f"{n}-resize" in watcher.job_done]
    made = collections.Counter(
        key for n in sizes for i in range(watcher.status[n].get("shards", 0))
        for key in re.findall(r'"resized (\S+) into', runner.logs(f"{n}-resize", i)))
    twice = sum(1 for c in made.values() if c > 1)
    d_at = d_created - start if d_created else 0
    starts = sum(n for (job, _), n in runner.started.items() if job.startswith("fair-"))
    images = sum(sizes.values())
    # Before the scheduler: parallel = min(spec, 6), shardSize = clamp(ceil(n / (parallel * 4)), 8, 200).
    old_starts = sum(-(-n // max(8, min(200, -(-n // (budget * 4))))) for n in sizes.values())
    return [
        f"2. Three equal jobs on a budget of {budget}, a fourth at {d_at:.1f} s, the smallest finishing first",
        f"   Jain's index (allocations / ideal max-min share; {len(jains)} samples of 0.1 s; goal >= 0.95)",
        f"     of the parallelism the scheduler set:  mean {statistics.mean(decided):.3f}   min {min(decided):.3f}   "
        f"5th percentile {percentile(decided, 5):.3f}",
        f"     of the pods running:                   mean {statistics.mean(jains):.3f}   min {min(jains):.3f}   "
        f"5th percentile {percentile(jains, 5):.3f}   (pods between two shards, starting or stopping, count 0)",
        f"   newcomer: first pod after {(first_pod or 0) - d_at:.2f} s, its share ({fair_d} pods) after "
        f"{(to_share or 0) - d_at:.2f} s   (tick {TICK:.0f} s)",
        f"   utilisation while demand exceeded the budget: {used / offered * 100 if offered else 0:.1f}% of "
        f"pod-seconds   goal >= 95%   (most pods at once: {runner.max_pods_total}, budget {budget})",
        f"   Job finished -> final phase: p50 {percentile(finals, 50):.0f} ms  p99 {percentile(finals, 99):.0f} ms  "
        f"max {max(finals):.0f} ms   goal p99 <= 1000 ms",
        f"   scale-downs {sum(runner.stopped.values())}, images made twice {twice} of {len(made)}   goal 0",
        f"   pod (process) starts: {starts} for {images} images = {starts / images * 1000:.0f} per 1,000 images "
        f"(the old rule, one pod per shard of 8-200 images with 4 shards a pod: {old_starts}, "
        f"{old_starts / images * 1000:.0f} per 1,000; ratio {starts / old_starts:.2f}x)",
    ]


def scenario_big(custom, emulator, watcher: Watcher, pid: int, s3) -> list[str]:
    count = 100_000
    started = time.monotonic()
    put_tiny(s3, [f"bench/big/{i // 1000:03d}/{i:06d}.jpg" for i in range(count)])
    put_s = time.monotonic() - started
    reset_peak(pid)
    created = time.monotonic()
    create(custom, "big", {"source": {"prefix": "bench/big/"}, "targets": [{"name": "t", "width": 10}]})
    while "Queued" not in watcher.phases["big"] and "Running" not in watcher.phases["big"] and \
            time.monotonic() - created < 600:
        time.sleep(0.1)
    plan_s = min(t for p, t in watcher.phases["big"].items() if p in ("Queued", "Running")) - created
    time.sleep(1)
    peak = rss_mb(pid, "VmHWM")
    stored = emulator.get("kresize.dev", "v1alpha1", "resizejobs", NAMESPACE, "big")
    size = len(json.dumps(stored))
    keys = [f"{i:064x}.jpg" for i in range(1000)]
    create(custom, "keys", {"source": {"prefix": "originals/", "keys": keys}, "targets": [{"name": "t", "width": 10}]})
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not watcher.status.get("keys", {}).get("phase"):
        time.sleep(0.2)
    time.sleep(1)
    keys_size = len(json.dumps(emulator.get("kresize.dev", "v1alpha1", "resizejobs", NAMESPACE, "keys")))
    status = watcher.status["big"]
    return [
        f"3. One ResizeJob over a prefix of {count:,} images (written to S3 in {put_s:.0f} s first)",
        f"   plan (list, {status.get('shards')} shard manifests, plan, Job): {plan_s:.1f} s   "
        f"stored size {size / 1000:.1f} KB (goal < 100 KB: {size / 100_000:.2f}x)   operator peak RSS {peak:.0f} MB "
        f"(goal < 200 MB: {peak / 200:.2f}x)",
        f"   a ResizeJob naming 1,000 keys (the most a spec may list), as stored: {keys_size / 1000:.1f} KB "
        f"(goal < 100 KB: {keys_size / 100_000:.2f}x)",
    ]


def main() -> int:
    backends = start_backends("scheduler")
    work, s3_server, emulator = backends.work, backends.s3_server, backends.emulator
    kubeconfig, api, s3 = backends.kubeconfig, backends.api, backends.s3_server.client()
    custom = kubernetes.client.CustomObjectsApi(api)
    watcher = Watcher(api)
    print("\nScheduler at scale (emulator platform, real operator, stand-in resizer; goals from issue 9)", flush=True)

    def operator(max_pods: int):
        return start_component("operator", s3_server, kubeconfig, work / f"operator-{max_pods}.log", operator={
            "maxPods": max_pods, "extraEnv": [{"name": "KRESIZE_LOG_FORMAT", "value": "json"}],
            "gc": {"intervalSeconds": 0}})

    wanted = set(sys.argv[1:]) or {"many", "big", "fair"}  # e.g. `python bench/bench_scheduler.py fair`
    op = operator(10)
    try:
        pid = python_pid(op.program.proc.pid)
        if "many" in wanted:
            print("\n".join(scenario_many(custom, watcher, pid, s3)), flush=True)
        if "big" in wanted:
            print("\n".join(scenario_big(custom, emulator, watcher, pid, s3)), flush=True)
            for name in ("big", "keys"):  # deleted (their finalizer run) before the next scenario's pods exist
                custom.delete_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", name)
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and custom.list_namespaced_custom_object(
                    "kresize.dev", "v1alpha1", NAMESPACE, "resizejobs")["items"]:
                time.sleep(0.5)
        peak_all = rss_mb(pid, "VmHWM")
    finally:
        op.stop()
    if "fair" not in wanted:
        watcher.stop()
        backends.stop()
        return 0
    op = operator(6)
    runner = JobRunner(kubeconfig, NAMESPACE, work / "pods", entrypoints={
        "": [sys.executable, str(REPO / "bench" / "standin_resizer.py")]}).start()
    try:
        print("\n".join(scenario_fairness(custom, watcher, runner, s3, 6)), flush=True)
    finally:
        runner.stop()
        op.stop()
        watcher.stop()
        backends.stop()
    print(f"   (operator peak RSS over scenarios 1 and 3: {peak_all:.0f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
