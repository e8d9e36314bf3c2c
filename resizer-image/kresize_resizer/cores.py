"""Every core: how many images a resizer renders at once, and the bounded pipeline that keeps them busy.

The number of render workers follows the CPU the process is actually given (its cgroup's quota, not the host's
core count: a pod limited to 2 CPUs on a 64-core node gets 2), and threads suffice because Pillow releases the
GIL while it decodes, resamples and encodes.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar, cast

from kresize_common.config import env_int
from kresize_common.records import PodEnv

T = TypeVar("T")
D = TypeVar("D")

CGROUP = Path("/sys/fs/cgroup")
# Images fetched ahead of the render workers: enough that a worker never waits for the network, few enough
# that memory stays bounded by the workers (each image in flight holds its encoded bytes, at most max_bytes).
FETCH_AHEAD = 2


def cpu_budget(cpu_max_text: str | None, affinity: int) -> int:
    """The CPUs a process may use: its cgroup's quota when there is one, rounded up (a 1.5-CPU quota keeps two
    workers busy part of the time rather than one all of it), never more than the CPUs it may run on, at least 1.

    `cpu_max_text` is cgroup v2's cpu.max ("<quota> <period>", quota "max" when unlimited), or cgroup v1's
    cpu.cfs_quota_us and cpu.cfs_period_us written the same way; None or unreadable: no quota.
    """
    affinity = max(1, affinity)
    fields = (cpu_max_text or "").split()
    if len(fields) < 2 or fields[0] == "max":
        return affinity
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return affinity
    if quota <= 0 or period <= 0:  # v1 writes -1 for no quota
        return affinity
    return max(1, min(affinity, math.ceil(quota / period)))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_cpu_max(root: Path = CGROUP) -> str | None:
    """The quota as cpu.max text: cgroup v2's own file, else cgroup v1's two files joined; None without either."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        return v2
    for v1 in (root / "cpu", root / "cpu,cpuacct", root):
        quota, period = _read(v1 / "cpu.cfs_quota_us"), _read(v1 / "cpu.cfs_period_us")
        if quota is not None and period is not None:
            return f"{quota} {period}"
    return None


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux (a laptop running `kresize-resizer local`)
        return os.cpu_count() or 1


def render_workers() -> int:
    """KRESIZE_RENDER_WORKERS when set to a positive number, else the CPU budget (0 or unset: automatic)."""
    return env_int(PodEnv.RENDER_WORKERS, 0, minimum=0) or cpu_budget(cgroup_cpu_max(), _affinity())


def pipelined(items: Sequence[T], fetch: Callable[[T], D], process: Callable[[T, D], None], workers: int, *,
              stop: threading.Event | None = None, ahead: int = FETCH_AHEAD) -> None:
    """fetch(item) for every item in `ahead` I/O threads and process(item, fetched) in `workers` threads, so
    fetching overlaps processing; items start in order, several are processed at once and finish in any order.

    At most workers + ahead items are fetched and not yet processed (memory is bounded by images in flight,
    not by the shard). When `stop` is set no further item starts processing; those being processed finish.
    fetch should turn an item's own failures into a value for process; an exception from either is an
    infrastructure error: no further item starts, those in flight finish, and the first one (in item order)
    is raised.
    """
    workers = max(1, workers)
    slots = threading.BoundedSemaphore(workers + ahead)
    halt = threading.Event()  # a stop, or an exception: no new item starts

    def halted() -> bool:
        return halt.is_set() or (stop is not None and stop.is_set())

    def run(item: T, fetched: Future[D | None]) -> None:
        try:
            data = fetched.result()  # fetched in order, started in order: never waits on a later item
            if halted():  # (then data may be the None of an item never fetched)
                return
            process(item, cast(D, data))
        except BaseException:
            halt.set()
            raise
        finally:
            slots.release()

    def get(item: T) -> D | None:
        return None if halted() else fetch(item)

    def acquire() -> bool:
        while not slots.acquire(timeout=0.1):  # wakes up to notice a stop while every slot is taken
            if halted():
                return False
        if halted():
            slots.release()
            return False
        return True

    futures: list[Future[None]] = []
    with ThreadPoolExecutor(max(1, ahead), thread_name_prefix="fetch") as fetchers, \
            ThreadPoolExecutor(workers, thread_name_prefix="render") as renderers:
        for item in items:
            if not acquire():
                break
            futures.append(renderers.submit(run, item, fetchers.submit(get, item)))
    for future in futures:
        future.result()
