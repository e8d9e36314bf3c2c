"""Every core: the resizer's render workers, sized from the CPU quota, on a real S3 server."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import pytest
import urllib3
from conftest import BUCKET
from kresize_common.config import ImageLimits
from kresize_common.records import ImageResult, ShardManifest
from kresize_common.s3 import ensure_bucket
from kresize_resizer import cores, worker
from kresize_resizer.cores import (
    cgroup_cpu_max,
    cgroup_memory_max,
    cpu_budget,
    memory_workers,
    pipelined,
    render_workers,
)
from kresize_resizer.worker import process_shard
from minio import Minio

TARGETS = [{"name": "small", "width": 96, "height": 96, "fit": "cover", "format": "png"},
           {"name": "big", "width": 480, "fit": "inside", "format": "webp", "quality": 80}]


@pytest.mark.parametrize(("cpu_max", "affinity", "expected"), [
    (None, 4, 4),  # no cgroup file: the CPUs it may run on
    ("max 100000", 8, 8),  # v2, no quota
    ("200000 100000", 64, 2),  # 2 CPUs on a big node: 2, not 64
    ("100000 100000", 64, 1),
    ("150000 100000", 64, 2),  # rounded up
    ("50000 100000", 64, 1),  # half a CPU: still one worker
    ("1000 100000", 64, 1),
    ("400000 100000", 2, 2),  # never more than the CPUs it may run on
    ("-1 100000", 3, 3),  # v1's "no quota"
    ("0 100000", 3, 3),
    ("garbage", 3, 3),
    ("", 0, 1),  # at least 1
])
def test_cpu_budget(cpu_max, affinity, expected):
    assert cpu_budget(cpu_max, affinity) == expected


GIB = 1024**3


@pytest.mark.parametrize(("memory_max", "cpus", "expected"), [
    (None, 2, 2),  # no limit
    ("max", 4, 4),  # v2, no limit
    ("9223372036854771712", 2, 2),  # v1, no limit
    (str(GIB), 2, 1),  # the chart's 1 GiB: one worst-case image at a time, however many CPUs
    (str(2 * GIB), 2, 2),
    (str(3 * GIB), 2, 2),  # never more than the CPUs
    (str(GIB // 2), 2, 1),  # at least 1
    ("garbage", 2, 2),
])
def test_memory_workers(memory_max, cpus, expected):
    assert memory_workers(memory_max, cpus) == expected


def test_the_cgroup_files(tmp_path):
    assert cgroup_cpu_max(tmp_path) is None and cgroup_memory_max(tmp_path) is None
    (tmp_path / "memory").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text("1073741824\n")
    assert cgroup_memory_max(tmp_path) == "1073741824"  # v1
    (tmp_path / "memory.max").write_text("max\n")
    assert cgroup_memory_max(tmp_path) == "max"  # v2 first
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_max(tmp_path) == "150000 100000"  # v1
    (tmp_path / "cpu.max").write_text("300000 100000\n")
    assert cgroup_cpu_max(tmp_path) == "300000 100000"  # v2 first


def test_the_override(monkeypatch):
    monkeypatch.setenv("KRESIZE_RENDER_WORKERS", "3")
    assert render_workers() == 3
    monkeypatch.setenv("KRESIZE_RENDER_WORKERS", "0")  # automatic
    assert render_workers() == memory_workers(cgroup_memory_max(), cpu_budget(cgroup_cpu_max(), cores._affinity()))
    monkeypatch.setenv("KRESIZE_RENDER_WORKERS", "-1")
    with pytest.raises(ValueError, match="KRESIZE_RENDER_WORKERS"):
        render_workers()


def test_an_exception_stops_the_pipeline_and_is_raised():
    started: list[int] = []

    def process(item: int, _data: int) -> None:
        started.append(item)
        if item == 3:
            raise OSError("S3 is gone")

    with pytest.raises(OSError, match="S3 is gone"):
        pipelined(range(100), lambda item: item, process, 2, ahead=1)
    assert len(started) < 10  # no new item after it


def make_shard(client, work: str, corpus: Path, copies: int, extra: dict[str, bytes] | None = None) -> ShardManifest:
    images = []
    for copy in range(copies):
        for path in sorted((corpus / "photos").glob("*.jpg")):
            key = f"{work}in/{copy}/{path.name}"
            client.fput_object(BUCKET, key, str(path))
            images.append({"key": key, "id": f"{copy}/{path.stem}"})
    for name, data in (extra or {}).items():
        key = f"{work}in/{name}"
        client.put_object(BUCKET, key, io.BytesIO(data), len(data))
        images.insert(len(images) // 2, {"key": key, "id": name.split(".")[0]})
    return ShardManifest.from_json({"index": 0, "sourceBucket": BUCKET, "outputBucket": BUCKET,
                                    "outputPrefix": f"{work}out/", "targets": TARGETS, "operations": {},
                                    "images": images})


def outputs(client, records: list[ImageResult], prefix: str) -> dict[str, bytes]:
    return {variant.path.removeprefix(prefix): client.get_object(BUCKET, variant.path).read()
            for record in records for variant in record.outputs}


def comparable(record: ImageResult) -> tuple:
    return record.source.split("/in/", 1)[1], record.status, record.error, tuple(
        (v.target, v.path.split("/out/", 1)[1], v.width, v.height, v.format, v.bytes) for v in record.outputs)


@pytest.fixture
def client(s3_server):
    # A pool as large as the pod's (kresize_common.s3.make_client): several workers talk to S3 at once.
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=30), retries=urllib3.Retry(total=0), maxsize=16)
    client = Minio(s3_server.endpoint, access_key=s3_server.access_key, secret_key=s3_server.secret_key,
                   secure=False, region="us-east-1", http_client=http)
    ensure_bucket(client, BUCKET)
    return client


def test_two_workers_make_what_one_makes(client, corpus, tmp_path):
    """The same records (in shard order) and byte-identical variants; each record reported once."""
    made = {}
    for workers in (1, 2):
        work = f"jobs/test/cores/{tmp_path.name}-{workers}/"
        shard = make_shard(client, work, corpus, 2, {"bad.jpg": b"not an image"})
        seen: list[ImageResult] = []
        records = process_shard(client, shard, ImageLimits(), workers=workers, on_result=seen.append)
        assert [r.source for r in records] == [i.key for i in shard.images]
        assert sorted(r.source for r in seen) == sorted(r.source for r in records)  # each once
        made[workers] = ({comparable(r) for r in records}, outputs(client, records, f"{work}out/"))
    assert made[1][0] == made[2][0]
    assert made[1][1] == made[2][1]  # byte-identical


def test_a_bad_image_fails_alone_with_two_workers(client, corpus, tmp_path):
    work = f"jobs/test/cores-bad/{tmp_path.name}/"
    shard = make_shard(client, work, corpus, 1, {"bad.jpg": b"not an image", "trunc.jpg": (
        corpus / "photos" / "DSCN0010.jpg").read_bytes()[:2000]})
    records = process_shard(client, shard, ImageLimits(), workers=2)
    failed = {r.source.rsplit("/", 1)[1] for r in records if r.status == "failed"}
    assert failed == {"bad.jpg", "trunc.jpg"}, records
    assert all(len(r.outputs) == 2 for r in records if r.status == "succeeded")
    assert len(records) == len(shard.images)


def test_a_stop_mid_shard_checkpoints_everything_finished_once(client, corpus, tmp_path):
    """The stop comes while two images are being rendered: both finish and are reported, no new one starts;
    a second run with what was reported as `done` makes the rest and nothing twice."""
    work = f"jobs/test/cores-stop/{tmp_path.name}/"
    shard = make_shard(client, work, corpus, 3)
    stop = threading.Event()
    seen: list[ImageResult] = []

    def on_result(record: ImageResult) -> None:
        seen.append(record)
        if len(seen) == 3:
            stop.set()

    first = process_shard(client, shard, ImageLimits(), workers=2, on_result=on_result, stop=stop)
    assert len(seen) == len(first) == len({r.source for r in seen})  # every finished image, once
    # At most the images in flight besides the third finished too: two being rendered, and one more whose last
    # upload was still going on in the background (worker.BACKGROUND_UPLOAD_MAX).
    assert 3 <= len(first) <= 3 + 2 + 2 - 1 < len(shard.images)
    again: list[ImageResult] = []
    rest = process_shard(client, shard, ImageLimits(), workers=2, on_result=again.append,
                         done={r.source: r for r in seen})
    assert not {r.source for r in again} & {r.source for r in seen}  # nothing made twice
    assert [r.source for r in rest] == [i.key for i in shard.images]
    assert all(r.status == "succeeded" for r in rest)


@pytest.mark.parametrize("workers", [1, 2])
def test_memory_is_bounded_by_the_images_in_flight(client, corpus, tmp_path, monkeypatch, workers):
    """Never more than workers + FETCH_AHEAD images downloaded and not yet rendered, however long the shard and
    however slow the renders; besides them, at most `workers` images finishing in the background, which hold
    only their last variant (worker.BACKGROUND_UPLOAD_MAX). The checkpoint callback is slow here."""
    work = f"jobs/test/cores-mem/{tmp_path.name}/"
    shard = make_shard(client, work, corpus, 2)
    lock = threading.Lock()
    rendering, unfinished = 0, 0  # downloaded and not rendered; downloaded and not reported
    peak_rendering, peak_unfinished = 0, 0
    download, render_each = worker._download, worker.render_each

    def counted(*args, **kwargs):
        nonlocal rendering, unfinished, peak_rendering, peak_unfinished
        result = download(*args, **kwargs)
        with lock:
            rendering += 1
            unfinished += 1
            peak_rendering, peak_unfinished = max(peak_rendering, rendering), max(peak_unfinished, unfinished)
        return result

    def rendered(*args, **kwargs):
        nonlocal rendering
        yield from render_each(*args, **kwargs)
        with lock:
            rendering -= 1

    def on_result(_record: ImageResult) -> None:
        nonlocal unfinished
        time.sleep(0.05)
        with lock:
            unfinished -= 1

    monkeypatch.setattr(worker, "_download", counted)
    monkeypatch.setattr(worker, "render_each", rendered)
    records = process_shard(client, shard, ImageLimits(), workers=workers, on_result=on_result)
    assert len(records) == len(shard.images) and rendering == unfinished == 0
    assert peak_rendering <= workers + cores.FETCH_AHEAD, peak_rendering
    assert peak_unfinished <= 2 * workers + cores.FETCH_AHEAD, peak_unfinished
    assert peak_rendering > 1  # downloads did run ahead of the renders
    assert peak_unfinished > peak_rendering  # and images finished in the background while others rendered


def test_local_uses_the_same_workers(corpus, tmp_path):
    from kresize_resizer.local import run_local

    (tmp_path / "in").mkdir()
    for path in sorted((corpus / "photos").glob("*.jpg"))[:4]:
        (tmp_path / "in" / path.name).write_bytes(path.read_bytes())
    (tmp_path / "in" / "DSCN0010.png").write_bytes(b"same stem as a jpg")
    spec = {"targets": TARGETS, "operations": {}}
    made = {}
    for workers in (1, 2):
        records = run_local(spec, tmp_path / "in", tmp_path / f"out{workers}", ImageLimits(), workers=workers)
        made[workers] = ([(r.source, r.status, r.error) for r in records],
                         {p.relative_to(tmp_path / f"out{workers}"): p.read_bytes()
                          for p in (tmp_path / f"out{workers}").rglob("*") if p.is_file() and p.name != "results.json"})
    assert made[1] == made[2]
    statuses = made[2][0]
    assert [s for s in statuses if s[1] == "failed"] == [
        ("DSCN0010.png", "failed", "another input already produced outputs for 'DSCN0010'")]


def test_one_malloc_arena(monkeypatch):
    """glibc's per-thread arenas would put the worst case over the pod's 1 GiB (tests/test_resizer_limits.py)."""
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert cores.limit_malloc_arenas() is False  # whoever set it decides
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert cores.limit_malloc_arenas() is True  # glibc (the image, this machine)


@pytest.mark.parametrize("variant", ["small", "big"])
def test_a_failing_upload_fails_the_shard_and_reports_nothing_of_that_image(client, corpus, tmp_path, monkeypatch,
                                                                            variant):
    """An infrastructure error uploading any variant fails the shard (no further image starts) and the image is
    never reported done: the first (small) variant's, seen by the worker as it hands out the next, and the last
    (big) one's, uploaded in the background while the worker takes the next image."""
    work = f"jobs/test/cores-tail/{tmp_path.name}/"
    shard = make_shard(client, work, corpus, 2)
    doomed = shard.images[2]
    put = worker._put

    def failing(client_, bucket, key, data, content_type):
        if f"/{doomed.id}/{variant}." in key:
            time.sleep(0.2)  # still uploading when the worker has moved on
            raise RuntimeError("the S3 server lost this object")
        return put(client_, bucket, key, data, content_type)

    monkeypatch.setattr(worker, "_put", failing)
    seen: list[ImageResult] = []
    with pytest.raises(RuntimeError, match="lost this object"):
        process_shard(client, shard, ImageLimits(), workers=2, on_result=seen.append)
    assert doomed.key not in {record.source for record in seen}
    assert len(seen) < len(shard.images) - 1, "no further image started once the error was seen"
