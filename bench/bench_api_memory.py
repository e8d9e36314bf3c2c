"""API memory under large uploads: peak RSS of the real `kresize-api` process (its pod's rules, the chart's env)
during one 200 MB request and during 5 concurrent 100 MB requests, beside its idle RSS measured in the same
run. Goal: under 200 MB in both (uploads are spooled to /tmp and streamed to S3, never held in memory).

Runs the platform's real parts on loopback: SeaweedFS S3, the apiserver emulator, the API under bubblewrap.

    python bench/bench_api_memory.py
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from backends import start_backends  # noqa: E402
from conftest import start_component  # noqa: E402

MB = 1_000_000
GOAL_MB = 200


def noise_png(seed: int, side: int = 4000) -> bytes:
    """About 48 MB: random pixels do not compress, so the file is as big as the image."""
    out = io.BytesIO()
    Image.frombytes("RGB", (side, side), os.urandom(side * side * 3)).save(out, "PNG", compress_level=0)
    return out.getvalue()


def python_pid(bwrap_pid: int) -> int:
    """The API's own process: bubblewrap's child."""
    children = Path(f"/proc/{bwrap_pid}/task/{bwrap_pid}/children").read_text().split()
    return int(children[0])


def rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024 / MB
    raise LookupError(field)


def reset_peak(pid: int) -> None:
    """Let VmHWM start again from the current RSS (Linux: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def upload(url: str, token: str, files: list[bytes]) -> int:
    parts = [("files", (f"{i}.png", data, "image/png")) for i, data in enumerate(files)]
    response = httpx.post(f"{url}/v1/jobs", files=parts, data={"width": "320"},
                          headers={"Authorization": f"Bearer {token}"}, timeout=600)
    return response.status_code


def main() -> int:
    print("making 4 noise PNGs of ~48 MB ...", flush=True)
    images = [noise_png(i) for i in range(4)]
    backends = start_backends("api")
    work, s3, kubeconfig, token = backends.work, backends.s3_server, backends.kubeconfig, backends.token
    # The chart's defaults but a request limit that admits a 200 MB request (the chart's is 200 MiB).
    api = start_component("api", s3, kubeconfig, work / "api.log", limits={"maxRequestBytes": 250 * 1024 * 1024})
    try:
        pid = python_pid(api.program.proc.pid)
        time.sleep(1)
        idle = rss_mb(pid, "VmRSS")
        rows = []
        for label, requests in (("1 request of 200 MB", [images]),
                                ("5 concurrent requests of 100 MB", [images[:2]] * 5)):
            reset_peak(pid)
            size = sum(len(d) for d in requests[0]) / MB
            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
                codes = list(pool.map(lambda files: upload(api.url, token, files), requests))
            elapsed = time.perf_counter() - started
            assert codes == [202] * len(requests), codes
            peak = rss_mb(pid, "VmHWM")
            rows.append((label, size, peak, elapsed))
        print(f"\nAPI peak RSS during uploads (idle RSS {idle:.0f} MB, measured in the same run; goal < {GOAL_MB} MB)")
        print(f"{'workload':<34} {'request':>9} {'peak RSS':>9} {'peak/idle':>10} {'peak/goal':>10} {'wall':>7}")
        for label, size, peak, elapsed in rows:
            print(f"{label:<34} {size:>7.0f}MB {peak:>7.0f}MB {peak / idle:>9.2f}x {peak / GOAL_MB:>9.2f}x "
                  f"{elapsed:>6.1f}s")
        return 0 if all(peak < GOAL_MB for _, _, peak, _ in rows) else 1
    finally:
        api.stop()
        backends.stop()


if __name__ == "__main__":
    sys.exit(main())
