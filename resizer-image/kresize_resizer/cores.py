"""Every core: how many images a resizer renders at once, and the bounded pipeline that keeps them busy.

The number of render workers follows the CPU the process is actually given (its cgroup's quota, not the host's
core count: a pod limited to 2 CPUs on a 64-core node gets 2), and threads suffice because Pillow releases the
GIL while it decodes, resamples and encodes.
"""

from __future__ import annotations

import ctypes
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
# Images fetched ahead of the render workers: one, as before the workers (the memory bound of docs/design.md
# counts "the next download"), is enough that a worker rarely waits for the network, and each image in
# flight holds its encoded bytes (up to max_bytes).
FETCH_AHEAD = 1
# What one image may take at worst under the default image limits, the interpreter included (docs/design.md,
# "Memory bounds": ~880 MiB; tests/test_resizer_limits.py measures it): the chart's 2 GiB pod holds two workers.
WORST_IMAGE_BYTES = 1024**3


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


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas() -> bool:
    """One malloc arena for the process (unless MALLOC_ARENA_MAX says otherwise), before any worker starts.

    glibc gives each thread that allocates its own arena, and memory freed in one is not reused by another:
    with the render in a thread of its own the worst case of tests/test_resizer_limits.py peaked at 1084 MiB
    instead of 790, over the pod's 1 GiB. Pillow's large buffers are mmapped anyway, so the workers barely
    contend for the one arena. False where there is no glibc (a laptop's `kresize-resizer local`)."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_ARENA_MAX, 1))
    except (OSError, AttributeError):
        return False


def memory_workers(memory_max_text: str | None, cpus: int) -> int:
    """At most as many workers as the memory limit holds worst-case images (WORST_IMAGE_BYTES each), and no
    more than `cpus`: a pod given 2 CPUs but 1 GiB renders one image at a time rather than risk the OOM killer.

    `memory_max_text` is cgroup v2's memory.max ("max" when unlimited) or v1's memory.limit_in_bytes (a huge
    number when unlimited); None or unreadable: no limit.
    """
    cpus = max(1, cpus)
    try:
        limit = int((memory_max_text or "max").split()[0])
    except (ValueError, IndexError):
        return cpus
    return max(1, min(cpus, limit // WORST_IMAGE_BYTES))


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


def cgroup_memory_max(root: Path = CGROUP) -> str | None:
    """cgroup v2's memory.max, else cgroup v1's memory.limit_in_bytes; None without either."""
    return _read(root / "memory.max") or _read(root / "memory" / "memory.limit_in_bytes")


def _affinity() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux (a laptop running `kresize-resizer local`)
        return os.cpu_count() or 1


def render_workers() -> int:
    """KRESIZE_RENDER_WORKERS when set to a positive number (whoever sets it answers for the memory), else
    (0 or unset) one per CPU of the budget, as far as the memory limit holds them."""
    return env_int(PodEnv.RENDER_WORKERS, 0, minimum=0) or memory_workers(
        cgroup_memory_max(), cpu_budget(cgroup_cpu_max(), _affinity()))


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

    def run(item: T, fetched: list[Future[D | None]]) -> None:
        try:
            fetched[0].result()  # fetched in order, started in order: never waits on a later item
            if halted():  # (then it may be the None of an item never fetched)
                return
            # Only process holds the fetched data (not this frame, not the future): it can drop it once used.
            process(item, cast(D, fetched.pop().result()))
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
            futures.append(renderers.submit(run, item, [fetchers.submit(get, item)]))
    for future in futures:
        future.result()
