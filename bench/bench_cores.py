"""Every core: a batch through `kresize-resizer run` on a local S3 server (SeaweedFS, tests/harness/s3.py) with
1 and with 2 CPUs; images per second and the 2-vs-1 ratio (goal >= 1.8x).

Each run is a fresh `kresize-resizer run` process whose CPU affinity is set to 1 or 2 CPUs before it starts,
so the pod sizes its render workers itself (cores.render_workers: no quota here, so the affinity), as a pod
with a 1- or 2-CPU limit does. The figure is wall clock from the process's start to its exit (startup and the
results write included) over the shard's images, and the shard alone (its log lines' times: no interpreter
startup); rounds alternate 1 and 2 CPUs, medians are printed. The S3
server runs on the same machine and takes CPU of its own (printed per run, with the pod's CPU time and the
load average): with 1 CPU for the pod it has the other CPU to itself, with 2 it takes from the pod. So each
round also runs `kresize-resizer local` over the same images in a folder (the same render workers, no S3, the
whole process timed): the resizer's own scaling. On a shared machine the figures move with the load.

    python bench/bench_cores.py [--rounds N] [--copies N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from harness.s3 import start_s3  # noqa: E402
from kresize_common import layout  # noqa: E402
from kresize_common.s3 import ensure_bucket, put_json  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus" / "photos"
BUCKET = "bench"
# The three-target set of bench_resize.py.
TARGETS = [{"name": "large", "width": 1280, "fit": "inside", "format": "jpeg", "quality": 80},
           {"name": "card", "width": 320, "height": 240, "fit": "cover", "format": "webp", "quality": 80},
           {"name": "thumb", "width": 64, "height": 64, "fit": "cover", "format": "jpeg", "quality": 80}]
GOAL = 1.8


def logged_at(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a running process (the S3 server's share of the machine during a run)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_resizer(args: list[str], cpus: int, env: dict[str, str] | None = None
                ) -> tuple[float, subprocess.CompletedProcess[str]]:
    """`kresize-resizer ARGS` in a fresh process pinned to `cpus` CPUs (it sizes its workers from them):
    its wall-clock seconds and what it printed; exits the bench when it fails."""
    available = sorted(os.sched_getaffinity(0))
    env = {"PATH": os.environ.get("PATH", ""), "PYTHONPATH": os.environ.get("PYTHONPATH", ""), **(env or {})}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "kresize_resizer", *args], env=env, capture_output=True,
                            text=True, preexec_fn=lambda: os.sched_setaffinity(0, available[:cpus]), timeout=600)
    seconds = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"kresize-resizer {args[0]} failed ({result.returncode}):\n{result.stderr[-2000:]}")
    return seconds, result


def run_pod(server, work: str, cpus: int) -> tuple[float, float]:
    """Seconds of one `kresize-resizer run` of index 0 with `cpus` CPUs: the whole process, and its shard
    (from its "rendering N images at once" line to its "done" line: no interpreter startup)."""
    seconds, result = run_resizer(["run"], cpus, {
        "JOB_COMPLETION_INDEX": "0", "KRESIZE_WORK_PREFIX": work, "KRESIZE_S3_ENDPOINT": server.endpoint,
        "KRESIZE_S3_ACCESS_KEY": server.access_key, "KRESIZE_S3_SECRET_KEY": server.secret_key,
        "KRESIZE_S3_BUCKET": BUCKET, "KRESIZE_LOG_FORMAT": "text"})  # asctime first
    if f"rendering {cpus} images at once" not in result.stderr:
        sys.exit(f"the pod did not size itself to {cpus} workers:\n{result.stderr[-2000:]}")
    lines = result.stderr.splitlines()
    (begin,) = [logged_at(line) for line in lines if "images at once" in line]
    (end,) = [logged_at(line) for line in lines if "shard 0 done" in line]
    return seconds, end - begin


def run_local(folder: Path, spec: Path, cpus: int) -> float:
    """Seconds of one `kresize-resizer local` over `folder` with `cpus` CPUs: the same render workers with no S3
    server competing for the CPUs, so the pipeline's own scaling."""
    with tempfile.TemporaryDirectory() as out:
        return run_resizer(["local", "--spec", str(spec), "--input", str(folder), "--output", out], cpus)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--copies", type=int, default=10,
                        help="copies of the corpus photos in the shard (10: 90 images, shards hold 20 to 5000)")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs 2 CPUs")
    photos = sorted(CORPUS.glob("*.jpg"))
    with tempfile.TemporaryDirectory() as workdir, start_s3(Path(workdir)) as server:
        client = server.client()
        ensure_bucket(client, BUCKET)
        images = []
        for copy in range(args.copies):
            for path in photos:
                client.fput_object(BUCKET, f"in/{copy}/{path.name}", str(path))
                images.append({"key": f"in/{copy}/{path.name}", "id": f"{copy}/{path.stem}"})
        folder = Path(workdir) / "local"
        folder.mkdir()
        for copy in range(args.copies):
            for path in photos:
                (folder / f"{copy}-{path.name}").write_bytes(path.read_bytes())
        spec = Path(workdir) / "spec.json"
        spec.write_text(json.dumps({"apiVersion": "kresize.io/v1alpha1", "kind": "ResizeJob",
                                    "metadata": {"name": "bench"},
                                    "spec": {"source": {"bucket": BUCKET, "prefix": "in/"}, "targets": TARGETS}}))
        local_rates: dict[int, list[float]] = {1: [], 2: []}
        rates: dict[int, list[float]] = {1: [], 2: []}
        shard_rates: dict[int, list[float]] = {1: [], 2: []}
        shared: list[float] = []  # CPU-seconds the pod and the S3 server took between them in the 2-CPU runs
        run = 0
        for round_ in range(args.rounds + 1):  # the first round warms the server and the page cache
            for cpus in ((1, 2) if round_ % 2 == 0 else (2, 1)):
                work = f"jobs/bench/cores/{run}/"
                run += 1
                put_json(client, BUCKET, layout.shard_key(work, 0), {
                    "index": 0, "sourceBucket": BUCKET, "outputBucket": BUCKET, "outputPrefix": f"{work}out/",
                    "targets": TARGETS, "operations": {}, "images": images})
                pod_cpu, s3_cpu = children_cpu(), cpu_seconds(server.proc.pid)
                seconds, shard_seconds = run_pod(server, work, cpus)
                pod_cpu, s3_cpu = children_cpu() - pod_cpu, cpu_seconds(server.proc.pid) - s3_cpu
                local_seconds = run_local(folder, spec, cpus)
                if round_:
                    local_rates[cpus].append(len(images) / local_seconds)
                    rates[cpus].append(len(images) / seconds)
                    shard_rates[cpus].append(len(images) / shard_seconds)
                    if cpus == 2:
                        shared.append(pod_cpu + s3_cpu)
                    print(f"round {round_}: {cpus} CPU: {len(images)} images in {seconds:.2f} s "
                          f"({shard_seconds:.2f} s in the shard): {len(images) / seconds:.2f} images/s; CPU: the pod "
                          f"{pod_cpu:.2f} s, the S3 server {s3_cpu:.2f} s; `local`: {local_seconds:.2f} s; "
                          f"load average {os.getloadavg()[0]:.2f}",
                          flush=True)
    print(f"\nbatch of {len(images)} images (corpus photos x{args.copies}, the three-target set), "
          f"`kresize-resizer run`, medians of {args.rounds} rounds; images/s (higher is better)")
    print(f"{'CPUs':>5} {'whole pod':>10} {'shard only':>11} {'local, no S3':>13}")
    for cpus in (1, 2):
        print(f"{cpus:>5} {statistics.median(rates[cpus]):>10.2f} {statistics.median(shard_rates[cpus]):>11.2f} "
              f"{statistics.median(local_rates[cpus]):>13.2f}")
    for name, figures in (("whole pod", rates), ("shard only", shard_rates), ("`kresize-resizer local`", local_rates)):
        ratio = statistics.median(figures[2]) / statistics.median(figures[1])
        print(f"2-CPU scaling, {name}: {ratio:.2f}x the images/s of 1 CPU; goal >= {GOAL}x: "
              f"{'met' if ratio >= GOAL else 'NOT met'}")
    # With 2 CPUs the pod shares them with the S3 server (with 1 it had the other CPU to itself): even with
    # both CPUs fully busy, a 2-CPU run takes at least (pod + server CPU) / 2 seconds.
    ceiling = len(images) / (statistics.median(shared) / 2) / statistics.median(rates[1])
    print(f"on this machine, the S3 server sharing the pod's 2 CPUs, at most {ceiling:.2f}x was possible "
          f"(the pod and the server took {statistics.median(shared):.2f} CPU-seconds between them per 2-CPU run)")

if __name__ == "__main__":
    main()
