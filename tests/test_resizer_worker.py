"""`kresize-resizer run`, the Job pod's program, against a real S3 server."""

from __future__ import annotations

import io
import json
import subprocess
import time

import pytest
from conftest import BUCKET
from harness.procs import free_port, wait_for
from harness.s3 import S3Server
from harness.sandbox import IMAGE_ENV, pod_argv, terminate
from kresize_common import layout
from kresize_common.records import PodEnv, heartbeat_is_fresh
from kresize_common.s3 import ensure_bucket, get_json_or_none, object_exists, put_json
from PIL import Image

WORK = "jobs/test/worker/uid-1/"


def pod_env(s3_server, index: int, **env: str) -> dict[str, str]:
    return {
        **IMAGE_ENV, "JOB_COMPLETION_INDEX": str(index), "KRESIZE_WORK_PREFIX": WORK,
        "KRESIZE_S3_ENDPOINT": s3_server.endpoint, "KRESIZE_S3_ACCESS_KEY": s3_server.access_key,
        "KRESIZE_S3_SECRET_KEY": s3_server.secret_key, "KRESIZE_S3_BUCKET": BUCKET, **env,
    }


def run_pod(s3_server, index: int, **env: str) -> subprocess.CompletedProcess[str]:
    """`kresize-resizer run` as a Job pod runs it (container rules, only the pod's env)."""
    return subprocess.run(pod_argv(["kresize-resizer", "run"], pod_env(s3_server, index, **env)), env={},
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def shard(s3_server, corpus):
    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    client.fput_object(BUCKET, "w/in/photo.jpg", str(corpus / "photos" / "DSCN0010.jpg"))
    client.put_object(BUCKET, "w/in/bad.jpg", io.BytesIO(b"not an image"), 12)
    put_json(client, BUCKET, layout.shard_key(WORK, 0), {
        "index": 0, "sourceBucket": BUCKET, "outputBucket": BUCKET, "outputPrefix": "w/out/",
        "targets": [{"name": "t", "width": 64, "height": 64, "fit": "cover", "format": "png"}], "operations": {},
        "images": [{"key": "w/in/photo.jpg", "id": "photo"}, {"key": "w/in/bad.jpg", "id": "bad"},
                   {"key": "w/in/gone.jpg", "id": "gone"}],
    })
    client.remove_object(BUCKET, layout.results_key(WORK, 0))
    return client


def test_a_shard_with_good_bad_and_missing_images(s3_server, shard):
    result = run_pod(s3_server, 0)
    assert result.returncode == 0, result.stderr
    records = {r["source"]: r for r in json.loads(shard.get_object(BUCKET, layout.results_key(WORK, 0)).read())}
    assert records["w/in/photo.jpg"]["status"] == "succeeded"
    (output,) = records["w/in/photo.jpg"]["outputs"]
    assert output["path"] == "w/out/photo/t.png"
    with Image.open(io.BytesIO(shard.get_object(BUCKET, output["path"]).read())) as image:
        assert image.size == (64, 64) and image.format == "PNG"
    assert records["w/in/bad.jpg"]["status"] == "failed" and "not an image" in records["w/in/bad.jpg"]["error"]
    assert "not found" in records["w/in/gone.jpg"]["error"]
    assert not object_exists(shard, BUCKET, layout.heartbeat_key(WORK, 0))  # deleted once the results are written
    # A retried pod finds its results and does nothing again.
    again = run_pod(s3_server, 0)
    assert again.returncode == 0 and "already done" in again.stderr


def test_unreachable_s3_fails_the_pod_without_leaking_credentials(s3_server, shard):
    result = run_pod(s3_server, 0, KRESIZE_S3_ENDPOINT=f"127.0.0.1:{free_port()}", KRESIZE_S3_RETRY_SECONDS="2")
    assert result.returncode == 1
    assert "infrastructure error" in result.stderr and "retrying" in result.stderr
    assert "KRESIZE_S3_RETRY_SECONDS" in result.stderr  # the message names the setting that bounds the wait
    assert s3_server.secret_key not in result.stdout + result.stderr


def test_wrong_credentials_fail_the_pod(s3_server, shard):
    result = run_pod(s3_server, 0, KRESIZE_S3_SECRET_KEY="wrong-secret")
    assert result.returncode == 1
    assert "SignatureDoesNotMatch" in result.stderr or "AccessDenied" in result.stderr
    assert "wrong-secret" not in result.stderr


def test_missing_configuration_is_a_usage_error(s3_server):
    result = subprocess.run(pod_argv(["kresize-resizer", "run"], IMAGE_ENV), capture_output=True, text=True, env={},
                            timeout=60)
    assert result.returncode == 2 and "KRESIZE_WORK_PREFIX" in result.stderr


@pytest.fixture
def outage_s3(tmp_path):
    """An S3 server of this test's own, to take down and bring back."""
    (tmp_path / "s3").mkdir()
    with S3Server(tmp_path / "s3").start() as server:
        ensure_bucket(server.client(), BUCKET)
        yield server


def test_a_short_s3_outage_costs_time_not_the_pod(outage_s3, corpus, tmp_path):
    """S3 is down (restarting) when a pod starts and comes back seconds later: the pod waits, then finishes.

    (Down from the start, so the test does not race a fast pod; every S3 call goes through the same retry.)"""
    client = outage_s3.client()
    images = sorted((corpus / "photos").glob("*.jpg"))[:4]
    for path in images:
        client.fput_object(BUCKET, f"w/in/{path.name}", str(path))
    put_json(client, BUCKET, layout.shard_key(WORK, 0), {
        "index": 0, "sourceBucket": BUCKET, "outputBucket": BUCKET, "outputPrefix": "w/out/",
        "targets": [{"name": "t", "width": 64, "height": 64, "fit": "cover", "format": "png"}], "operations": {},
        "images": [{"key": f"w/in/{p.name}", "id": p.stem} for p in images],
    })
    log = tmp_path / "pod.log"
    outage_s3.stop()  # SIGKILL, as a crashed S3 pod
    with log.open("wb") as out:
        pod = subprocess.Popen(pod_argv(["kresize-resizer", "run"], pod_env(outage_s3, 0)), env={}, stdout=out,
                               stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "retrying" in log.read_text(), 60, interval=0.1, message="the pod to notice")
        time.sleep(3)
        assert pod.poll() is None, log.read_text()  # still waiting, not failed
        outage_s3.start()
        assert pod.wait(120) == 0, log.read_text()
    finally:
        if pod.poll() is None:
            pod.kill()
    records = json.loads(client.get_object(BUCKET, layout.results_key(WORK, 0)).read())
    assert [r["status"] for r in records] == ["succeeded"] * len(images), records
    assert outage_s3.secret_key not in log.read_text()


def test_one_odd_image_never_fails_the_shard(s3_server, corpus):
    """A crafted AVIF on which Pillow raises RuntimeError and a PNG with a corrupt IDAT are failed records
    naming their error; the photo next to them is resized (by a target whose width came as 64.0); exit 0."""
    from test_corrupt_images import crafted_avif, encoded, fix_crcs, idat_position, xor

    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    with Image.open(corpus / "photos" / "DSCN0010.jpg") as image:
        photo = image.convert("RGB")
    png = encoded(photo, "PNG")
    objects = {"w/odd/crafted.avif": crafted_avif(photo),
               "w/odd/corrupt.png": fix_crcs(xor(png, idat_position(png, 0.5), b"\x5a" * 16)),
               "w/odd/photo.jpg": (corpus / "photos" / "DSCN0010.jpg").read_bytes()}
    for key, data in objects.items():
        client.put_object(BUCKET, key, io.BytesIO(data), len(data))
    put_json(client, BUCKET, layout.shard_key(WORK, 1), {
        "index": 1, "sourceBucket": BUCKET, "outputBucket": BUCKET, "outputPrefix": "w/odd-out/",
        "targets": [{"name": "t", "width": 64.0, "height": 64, "fit": "cover", "format": "png"}], "operations": {},
        "images": [{"key": key, "id": key.rsplit("/", 1)[1].split(".")[0]} for key in objects],
    })
    client.remove_object(BUCKET, layout.results_key(WORK, 1))
    result = run_pod(s3_server, 1)
    assert result.returncode == 0, result.stderr
    records = {r["source"]: r for r in json.loads(client.get_object(BUCKET, layout.results_key(WORK, 1)).read())}
    crafted = records["w/odd/crafted.avif"]
    assert crafted["status"] == "failed" and crafted["outputs"] == []
    assert "RuntimeError" in crafted["error"] and "Missing or empty image item" in crafted["error"]
    assert records["w/odd/corrupt.png"]["status"] == "failed" and "corrupt" in records["w/odd/corrupt.png"]["error"]
    assert records["w/odd/photo.jpg"]["status"] == "succeeded"
    (output,) = records["w/odd/photo.jpg"]["outputs"]
    assert (output["width"], output["height"]) == (64, 64)
    assert "RuntimeError" in result.stderr  # logged with its traceback for whoever debugs it


@pytest.mark.parametrize(("targets", "operations", "message"), [
    ([{"name": "t", "width": 10.5}], {}, "must be an integer"),
    ([{"name": "t", "width": float("nan")}], {}, "must be an integer"),
    ([{"name": "t", "height": float("inf")}], {}, "must be an integer"),
    ([{"name": "t", "width": 10}], {"blur": float("nan")}, "finite number"),
    ([{"name": "t", "width": 10}], {"sharpen": float("inf")}, "finite number"),
])
def test_targets_the_pipeline_cannot_use_fail_every_image_without_touching_s3(targets, operations, message):
    """Values no Pillow call may see (NaN, infinities, fractional sizes) fail the shard's images, not the pod:
    a retry would meet them again. No S3 client is needed to find that out."""
    from kresize_common.config import ImageLimits
    from kresize_common.records import ShardManifest
    from kresize_resizer.worker import process_shard

    shard = {"index": 0, "sourceBucket": BUCKET, "outputBucket": BUCKET, "outputPrefix": "o/", "targets": targets,
             "operations": operations, "images": [{"key": "a.jpg", "id": "a"}, {"key": "b.jpg", "id": "b"}]}
    records = process_shard(None, ShardManifest.from_json(shard), ImageLimits())  # type: ignore[arg-type]
    assert [r.source for r in records] == ["a.jpg", "b.jpg"]
    assert all(r.status == "failed" and message in (r.error or "") for r in records), records


def test_a_stopped_pod_checkpoints_and_its_retry_redoes_no_finished_image(s3_server, corpus, tmp_path):
    """SIGTERM mid-shard (a scale-down, a deletion): the pod finishes the image in flight, writes the records
    it has and exits 143 (ignored by the Job's pod failure policy). The next attempt skips those images."""
    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    work = f"jobs/test/stop/{tmp_path.name}/"
    photos = sorted((corpus / "photos").glob("*.jpg"))
    images = []
    for copy in range(4):
        for path in photos:
            client.fput_object(BUCKET, f"{work}in/{copy}/{path.name}", str(path))
            images.append({"key": f"{work}in/{copy}/{path.name}", "id": f"{copy}/{path.stem}"})
    put_json(client, BUCKET, layout.shard_key(work, 0), {
        "index": 0, "sourceBucket": BUCKET, "outputBucket": BUCKET, "outputPrefix": f"{work}out/", "operations": {},
        "targets": [{"name": "big", "width": 1280, "fit": "inside", "format": "webp", "quality": 80,
                     "upscale": False, "background": "#ffffff"}], "images": images})
    env = pod_env(s3_server, 0, KRESIZE_WORK_PREFIX=work)
    log = tmp_path / "first.log"
    with log.open("wb") as out:
        pod = subprocess.Popen(pod_argv(["kresize-resizer", "run"], env), env={}, stdout=out, stderr=subprocess.STDOUT,
                               start_new_session=True)
    wait_for(lambda: list(client.list_objects(BUCKET, prefix=layout.checkpoints_prefix(work, 0))), 120,
             interval=0.05, message="the first checkpoint")
    # The pod works on the index, and says so.
    assert heartbeat_is_fresh(get_json_or_none(client, BUCKET, layout.heartbeat_key(work, 0)), time.time())
    terminate(pod.pid)
    assert pod.wait(60) == PodEnv.STOPPED_EXIT_CODE, log.read_text()
    assert not object_exists(client, BUCKET, layout.results_key(work, 0))
    assert not object_exists(client, BUCKET, layout.heartbeat_key(work, 0))  # stopped: no one works on it
    checkpointed = {r["source"] for o in client.list_objects(BUCKET, prefix=layout.checkpoints_prefix(work, 0))
                    for r in json.loads(client.get_object(BUCKET, o.object_name).read())}
    assert 0 < len(checkpointed) < len(images)
    made = {o.object_name: o.last_modified for o in client.list_objects(BUCKET, prefix=f"{work}out/", recursive=True)}

    again = subprocess.run(pod_argv(["kresize-resizer", "run"], env), env={}, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"{len(checkpointed)} of {len(images)} images were finished by an earlier attempt" in again.stderr
    assert not object_exists(client, BUCKET, layout.heartbeat_key(work, 0))
    records = json.loads(client.get_object(BUCKET, layout.results_key(work, 0)).read())
    assert [r["source"] for r in records] == [i["key"] for i in images]  # every image, in shard order
    assert all(r["status"] == "succeeded" for r in records)
    for record in records:
        if record["source"] in checkpointed:  # finished before the stop: not made again
            (output,) = record["outputs"]
            stat = client.stat_object(BUCKET, output["path"])
            assert stat.last_modified == made[output["path"]], output["path"]


def test_the_heartbeat_is_there_while_a_shard_is_worked_on_and_gone_after(s3_server, corpus, tmp_path):
    """Written before the first image, renewed while the pod works (by its own clock, not per image), deleted
    when the shard ends; what a reader sees is fresh all along."""
    from kresize_common.config import ImageLimits
    from kresize_common.records import ShardManifest
    from kresize_resizer.worker import Heartbeat, process_shard

    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    work = f"jobs/test/beat/{tmp_path.name}/"
    photos = sorted((corpus / "photos").glob("*.jpg"))[:3]
    for path in photos:
        client.fput_object(BUCKET, f"{work}in/{path.name}", str(path))
    shard = ShardManifest.from_json({
        "index": 2, "sourceBucket": BUCKET, "outputBucket": BUCKET, "outputPrefix": f"{work}out/", "operations": {},
        "targets": [{"name": "t", "width": 32, "format": "png"}],
        "images": [{"key": f"{work}in/{p.name}", "id": p.stem} for p in photos]})
    key = layout.heartbeat_key(work, 2)
    assert key == f"{work}active/00002.json"
    seen: list[float] = []

    def on_result(_record) -> None:
        raw = get_json_or_none(client, BUCKET, key)
        assert heartbeat_is_fresh(raw, time.time()), raw
        seen.append(raw["at"])
        time.sleep(0.3)  # longer than the beat interval: the next image sees a newer beat

    heartbeat = Heartbeat(client, BUCKET, work, 2, interval=0.1)
    heartbeat.start()
    try:
        records = process_shard(client, shard, ImageLimits(), on_result=on_result)
    finally:
        heartbeat.stop()
    assert [r.status for r in records] == ["succeeded"] * 3
    assert len(seen) == 3 and seen == sorted(seen) and seen[0] < seen[-1]
    assert not object_exists(client, BUCKET, key)
    heartbeat.beat()  # a late beat (the thread's, racing the stop) never brings it back
    assert not object_exists(client, BUCKET, key)


def test_an_unreachable_s3_never_fails_the_heartbeat(s3_server, caplog):
    import urllib3
    from kresize_resizer.worker import Heartbeat
    from minio import Minio

    client = Minio(f"127.0.0.1:{free_port()}", access_key="a", secret_key="b", secure=False, region="us-east-1",
                   http_client=urllib3.PoolManager(retries=urllib3.Retry(total=0)))
    heartbeat = Heartbeat(client, BUCKET, "jobs/test/nowhere/uid/", 0, interval=0.05)
    heartbeat.start()  # logged, not raised
    heartbeat.stop()
    assert "could not write the heartbeat" in caplog.text and "could not delete the heartbeat" in caplog.text
