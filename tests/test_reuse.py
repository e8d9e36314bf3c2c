"""Result reuse: an image resized before with the same target parameters is not resized again; its variants are
copied (kresize_common/cache.py, operator/kresize_operator/reuse.py, storage.ensure_plan, the resizer's cache
entries), against a real S3 server."""

from __future__ import annotations

import hashlib
import io
import json

import pytest
from conftest import BUCKET
from kresize_common import layout
from kresize_common.cache import cache_scope, content_identity, params_hash, scoped_identity
from kresize_common.config import ImageLimits
from kresize_common.records import CacheEntry, ShardManifest, results_from_json
from kresize_common.s3 import RetryPolicy, ensure_bucket, get_json, get_json_or_none, object_exists
from kresize_common.spec import SpecError, normalize_spec
from kresize_operator import storage
from kresize_operator.config import OperatorSettings
from kresize_resizer import worker

SMALL = {"name": "small", "width": 64, "height": 64, "fit": "cover", "format": "png"}
LARGE = {"name": "large", "width": 320, "format": "webp", "quality": 70}


# --- the key parts (pure) ---

def test_equal_parameters_hash_equally_however_written():
    base = params_hash({"name": "t", "width": 64, "format": "webp", "quality": 80}, {"blur": 1})
    assert params_hash({"quality": 80, "format": "webp", "width": 64, "name": "t"}, {"blur": 1}) == base  # key order
    assert params_hash({"name": "t", "width": 64.0, "format": "webp", "quality": 80.0}, {"blur": 1.0}) == base
    assert params_hash({"name": "other", "width": 64, "format": "webp", "quality": 80}, {"blur": 1}) == base
    # The CRD's defaults, written out or not, are the same parameters.
    explicit = {"name": "t", "width": 64, "format": "webp", "quality": 80, "fit": "cover", "upscale": False,
                "background": "#FFFFFF"}
    defaults = params_hash({"name": "t", "width": 64, "format": "webp", "quality": 80}, {})
    assert params_hash(explicit, {"grayscale": False, "blur": 0, "sharpen": 0}) == defaults
    assert params_hash({"name": "t", "width": 64, "format": "webp", "quality": 80}, None) == defaults


@pytest.mark.parametrize(("target", "operations"), [
    ({"name": "t", "width": 65, "format": "webp", "quality": 80}, {"blur": 1}),
    ({"name": "t", "width": 64, "format": "png", "quality": 80}, {"blur": 1}),
    ({"name": "t", "width": 64, "format": "webp", "quality": 81}, {"blur": 1}),
    ({"name": "t", "width": 64, "height": 64, "format": "webp", "quality": 80}, {"blur": 1}),
    ({"name": "t", "width": 64, "format": "webp", "quality": 80, "fit": "inside"}, {"blur": 1}),
    ({"name": "t", "width": 64, "format": "webp", "quality": 80}, {"blur": 2}),
    ({"name": "t", "width": 64, "format": "webp", "quality": 80}, {"blur": 1, "grayscale": True}),
    ({"name": "t", "width": 64, "format": "webp", "quality": 80}, {}),
])
def test_different_parameters_hash_differently(target, operations):
    assert params_hash(target, operations) != params_hash(
        {"name": "t", "width": 64, "format": "webp", "quality": 80}, {"blur": 1})


def test_parameters_the_pipeline_cannot_use_have_no_hash():
    with pytest.raises(SpecError):
        params_hash({"name": "t", "width": 10.5}, {})


SHA = hashlib.sha256(b"x").hexdigest()


@pytest.mark.parametrize(("key", "etag", "trusted", "identity"), [
    (f"originals/{SHA}.jpg", None, True, f"sha256-{SHA}"),
    (f"originals/{SHA}.jpg", '"abc"', True, f"sha256-{SHA}"),  # the name wins: no HEAD needed
    (f"originals/{SHA}.jpg", '"abc"', False, "etag-abc"),  # a name anyone could give: the ETag
    (f"originals/{SHA}.jpg", None, False, None),
    ("originals/not-a-hash.jpg", "abc", True, "etag-abc"),
    (f"originals/sub/{SHA}.jpg", None, True, None),
    ("photos/a.jpg", '"5d41402abc4b2a76b9719d911017c592"', True, "etag-5d41402abc4b2a76b9719d911017c592"),
    ("photos/a.jpg", "5d41402abc4b2a76b9719d911017c592-3", True, "etag-5d41402abc4b2a76b9719d911017c592-3"),
    ("photos/a.jpg", None, True, None),
    ("photos/a.jpg", '""', True, None),
    ("photos/a.jpg", "../x", True, None),  # never anything odd in a key
])
def test_content_identity(key, etag, trusted, identity):
    assert content_identity(key, etag, originals_trusted=trusted) == identity


def test_cache_key():
    assert layout.cache_key("ns/alice/sha256-ab") == "cache/ns/alice/sha256-ab.json"


# --- against S3 ---

@pytest.fixture
def s3(s3_server):
    client = s3_server.client()
    ensure_bucket(client, BUCKET)
    return client


@pytest.fixture
def config(s3_server) -> OperatorSettings:
    return OperatorSettings(namespace="test", s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                            s3_secret_key=s3_server.secret_key, s3_bucket=BUCKET)


PHOTOS = ("Reconyx_HC500_Hyperfire.jpg", "fujifilm-dx10.jpg", "nikon-e950.jpg")


def unique(data: bytes, tmp_path) -> bytes:
    """The same picture with content of this test's own (bytes after the JPEG's end, which decoders ignore):
    the cache is shared by content, and every test starts with nothing cached."""
    return data + b"\0" + tmp_path.name.encode()


@pytest.fixture
def base(s3, corpus, tmp_path) -> str:
    """Three corpus photos under `<base>/in/` (a prefix of this test's own)."""
    base = f"reuse/{tmp_path.name}"
    for name in PHOTOS:
        data = unique((corpus / "photos" / name).read_bytes(), tmp_path)
        s3.put_object(BUCKET, f"{base}/in/{name}", io.BytesIO(data), len(data))
    return base


def plan_job(s3, config, job: str, spec: dict) -> tuple[str, storage.ShardPlan]:
    spec = normalize_spec(spec)
    # Each test's own uid (from its output prefix): a job of the same name in another test is another job.
    work = layout.work_prefix("test", job, spec["output"]["prefix"].split("/")[1])
    placement = storage.placement_for(spec, "test", job, config)
    return work, storage.ensure_plan(s3, config, work, spec, placement)


def run_shards(s3, work: str, plan, renders: list[str] | None = None) -> list:
    """Each shard as its pod runs it: checkpointed images are done, cache entries go to the platform bucket."""
    records = []
    for index in range(plan.shards):
        shard = ShardManifest.from_json(get_json(s3, BUCKET, layout.shard_key(work, index)))
        done = worker.Checkpointer(s3, BUCKET, work, index, RetryPolicy()).done()
        records += worker.process_shard(s3, shard, ImageLimits(), done=done, cache_bucket=BUCKET)
    return records


@pytest.fixture
def renders(monkeypatch) -> list[int]:
    """How many images the resizer rendered (a spy on its pipeline)."""
    calls: list[int] = []
    real = worker.render_each

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(worker, "render_each", spy)
    return calls


def job_spec(base: str, out: str, *targets: dict, **source) -> dict:
    return {"source": source or {"prefix": f"{base}/in/"}, "targets": list(targets),
            "output": {"prefix": f"{base}/{out}/"}}


def read(s3, key: str) -> bytes:
    response = s3.get_object(BUCKET, key)
    try:
        return response.read()
    finally:
        response.close()
        response.release_conn()


def test_a_repeated_job_reuses_every_variant(s3, config, base, renders):
    work1, plan1 = plan_job(s3, config, "first", job_spec(base, "out1", SMALL, LARGE))
    assert (plan1.total, plan1.reused) == (3, 0) and not storage.all_reused(plan1)
    first = run_shards(s3, work1, plan1)
    assert [r.status for r in first] == ["succeeded"] * 3 and not any(r.reused for r in first)
    assert len(renders) == 3
    for record in first:  # one cache entry per variant
        identity = content_identity(record.source, s3.stat_object(BUCKET, record.source).etag)
        for output, target in zip(record.outputs, (SMALL, LARGE), strict=True):
            entry = CacheEntry.from_json(get_json(s3, BUCKET, layout.cache_key(identity))).variants[
                params_hash(target, {})]
            assert (entry.bucket, entry.path, entry.width, entry.height) == (BUCKET, output.path, output.width,
                                                                             output.height)

    # The same images and parameters, other target names, another output prefix: nothing is resized.
    work2, plan2 = plan_job(s3, config, "second", job_spec(base, "out2", {**SMALL, "name": "thumb"},
                                                          {**LARGE, "name": "preview"}))
    assert (plan2.total, plan2.reused) == (3, 3) and storage.all_reused(plan2)
    assert get_json(s3, BUCKET, layout.plan_key(work2))["reused"] == 3
    checkpoint = results_from_json(get_json(s3, BUCKET, layout.checkpoint_key(work2, 0, 0)))
    assert [r.source for r in checkpoint] == [r.source for r in first]  # in shard order
    assert all(r.reused and r.status == "succeeded" for r in checkpoint)
    for old, new in zip(first, checkpoint, strict=True):
        assert [o.target for o in new.outputs] == ["thumb", "preview"]
        for made, copied in zip(old.outputs, new.outputs, strict=True):
            assert copied.path.startswith(f"{base}/out2/") and copied.path.endswith(f"/{copied.target}."
                                                                                    f"{made.path.rsplit('.')[-1]}")
            assert read(s3, copied.path) == read(s3, made.path)  # a copy, byte for byte
            assert (copied.width, copied.height, copied.format, copied.bytes) == (made.width, made.height,
                                                                                 made.format, made.bytes)
    # A shard whose images were all reused has its results too: its pod (if any) has nothing to do.
    assert results_from_json(get_json(s3, BUCKET, layout.results_key(work2, 0))) == checkpoint
    assert storage.shard_records(s3, BUCKET, work2, 0, failed_reason=None) == checkpoint

    # Its pod, were it started, renders nothing and returns the reused records.
    assert run_shards(s3, work2, plan2) == checkpoint
    assert len(renders) == 3


def test_other_parameters_are_not_reused(s3, config, base):
    work1, plan1 = plan_job(s3, config, "first", job_spec(base, "out1", SMALL))
    run_shards(s3, work1, plan1)
    work2, plan2 = plan_job(s3, config, "wider", job_spec(base, "out2", {**SMALL, "width": 65}))
    assert plan2.reused == 0
    assert not object_exists(s3, BUCKET, layout.checkpoint_key(work2, 0, 0))
    assert not list(s3.list_objects(BUCKET, prefix=f"{base}/out2/", recursive=True))  # nothing copied
    # One target of two cached: the image is made again, whole.
    _, plan3 = plan_job(s3, config, "mixed", job_spec(base, "out3", SMALL, LARGE))
    assert plan3.reused == 0


def test_a_deleted_variant_falls_back_to_processing(s3, config, base, renders):
    work1, plan1 = plan_job(s3, config, "first", job_spec(base, "out1", SMALL, LARGE))
    first = run_shards(s3, work1, plan1)
    gone = first[1]
    s3.remove_object(BUCKET, gone.outputs[1].path)  # the first job's files deleted (one variant is enough)

    work2, plan2 = plan_job(s3, config, "second", job_spec(base, "out2", SMALL, LARGE))
    assert (plan2.total, plan2.reused) == (3, 2) and not storage.all_reused(plan2)
    checkpoint = results_from_json(get_json(s3, BUCKET, layout.checkpoint_key(work2, 0, 0)))
    assert [r.source for r in checkpoint] == [first[0].source, first[2].source]
    assert not object_exists(s3, BUCKET, layout.results_key(work2, 0))  # the shard still has work

    del renders[:]
    second = run_shards(s3, work2, plan2)
    assert len(renders) == 1  # only the image whose variant was gone
    assert [r.source for r in second] == [r.source for r in first]
    assert [r.reused for r in second] == [True, False, True]
    assert all(r.status == "succeeded" for r in second)
    # Its new variants are cached now, for the next job.
    _, plan3 = plan_job(s3, config, "third", job_spec(base, "out3", SMALL, LARGE))
    assert plan3.reused == 3


def test_a_variant_overwritten_since_is_not_reused(s3, config, base):
    """The cache entry names the variant's ETag: the same key with other content (a job recreated under the same
    output prefix with other parameters) is a miss, not a wrong image."""
    work1, plan1 = plan_job(s3, config, "first", job_spec(base, "out1", SMALL))
    first = run_shards(s3, work1, plan1)
    path = first[0].outputs[0].path
    s3.put_object(BUCKET, path, io.BytesIO(b"something else"), 14)
    work2, plan2 = plan_job(s3, config, "second", job_spec(base, "out2", SMALL))
    assert plan2.reused == 2
    assert first[0].source not in {r.source for r in results_from_json(
        get_json(s3, BUCKET, layout.checkpoint_key(work2, 0, 0)))}


def test_a_job_with_the_same_output_keys_reuses_the_variants_in_place(s3, config, base):
    """A job of the same name (a new uid) writes where the first did: S3 refuses a copy onto itself, so the
    variant is checked and kept."""
    work1, plan1 = plan_job(s3, config, "first", job_spec(base, "out1", SMALL))
    first = run_shards(s3, work1, plan1)
    work2, plan2 = plan_job(s3, config, "again", job_spec(base, "out1", SMALL))
    assert plan2.reused == 3
    assert results_from_json(get_json(s3, BUCKET, layout.results_key(work2, 0))) == [
        type(r)(r.source, r.status, r.error, r.outputs, 0.0, True) for r in first]


def test_uploaded_originals_are_reused_by_their_name(s3, config, corpus, tmp_path):
    """`keys` under originals/ in the platform bucket: the sha256 in the name is the identity (no HEAD), and the
    resizer checks it against the bytes before it files a cache entry."""
    data = unique((corpus / "photos" / "DSCN0021.jpg").read_bytes(), tmp_path)
    sha = hashlib.sha256(data).hexdigest()
    s3.put_object(BUCKET, layout.UPLOADS_SOURCE_PREFIX + layout.original_key(sha, "jpg"), io.BytesIO(data), len(data))
    liar = hashlib.sha256(tmp_path.name.encode()).hexdigest()  # a name that is not its content
    s3.put_object(BUCKET, layout.UPLOADS_SOURCE_PREFIX + layout.original_key(liar, "jpg"), io.BytesIO(data),
                  len(data))
    base = f"reuse/{tmp_path.name}"
    source = {"prefix": layout.UPLOADS_SOURCE_PREFIX, "keys": [f"{sha}.jpg", f"{liar}.jpg"]}
    work1, plan1 = plan_job(s3, config, "up1", job_spec(base, "out1", SMALL, **source))
    first = run_shards(s3, work1, plan1)
    assert [r.status for r in first] == ["succeeded"] * 2
    assert object_exists(s3, BUCKET, layout.cache_key(f"sha256-{sha}"))
    assert not object_exists(s3, BUCKET, layout.cache_key(f"sha256-{liar}"))
    work2, plan2 = plan_job(s3, config, "up2", job_spec(base, "out2", SMALL, **source))
    assert plan2.reused == 1
    (record,) = results_from_json(get_json(s3, BUCKET, layout.checkpoint_key(work2, 0, 0)))
    assert record.source == f"originals/{sha}.jpg" and record.reused


def test_named_objects_elsewhere_are_not_reused(s3, config, base):
    """`keys` outside originals/: no identity without a HEAD each, so no reuse (and no extra request)."""
    names = sorted(o.object_name.rsplit("/", 1)[1] for o in s3.list_objects(BUCKET, prefix=f"{base}/in/"))
    source = {"prefix": f"{base}/in/", "keys": names}
    work1, plan1 = plan_job(s3, config, "named1", job_spec(base, "out1", SMALL, **source))
    run_shards(s3, work1, plan1)
    _, plan2 = plan_job(s3, config, "named2", job_spec(base, "out2", SMALL, **source))
    assert plan2.reused == 0
    # A listed job of the same images does find what the named one cached (the GET's ETag).
    _, plan3 = plan_job(s3, config, "listed", job_spec(base, "out3", SMALL))
    assert plan3.reused == 3


def test_an_unreadable_cache_entry_is_a_miss(s3, config, base):
    work1, plan1 = plan_job(s3, config, "first", job_spec(base, "out1", SMALL))
    first = run_shards(s3, work1, plan1)
    identity = content_identity(first[0].source, s3.stat_object(BUCKET, first[0].source).etag)
    key = layout.cache_key(identity)
    s3.put_object(BUCKET, key, io.BytesIO(b'{"bucket": "x"}'), 15)
    _, plan2 = plan_job(s3, config, "second", job_spec(base, "out2", SMALL))
    assert plan2.reused == 2


def test_an_existing_plan_keeps_its_reused_count(s3, config, base):
    work1, plan1 = plan_job(s3, config, "first", job_spec(base, "out1", SMALL))
    run_shards(s3, work1, plan1)
    work2, plan2 = plan_job(s3, config, "second", job_spec(base, "out2", SMALL))
    assert plan_job(s3, config, "second", job_spec(base, "out2", SMALL)) == (work2, plan2)
    # An old plan.json, without the field, reads as nothing reused.
    raw = get_json(s3, BUCKET, layout.plan_key(work2))
    del raw["reused"]
    s3.put_object(BUCKET, layout.plan_key(work2), io.BytesIO(json.dumps(raw).encode()), len(json.dumps(raw)))
    assert plan_job(s3, config, "second", job_spec(base, "out2", SMALL))[1].reused == 0


def test_a_failed_cache_write_never_fails_the_image(s3, base, monkeypatch):
    def broken(*_args, **_kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(worker, "put_json", broken)
    images = [{"key": o.object_name, "id": o.object_name.rsplit("/", 1)[1].split(".")[0]}
              for o in s3.list_objects(BUCKET, prefix=f"{base}/in/")]
    shard = ShardManifest.from_json({"index": 0, "sourceBucket": BUCKET, "outputBucket": BUCKET,
                                     "outputPrefix": f"{base}/out/", "targets": [SMALL], "operations": {},
                                     "images": images})
    records = worker.process_shard(s3, shard, ImageLimits(), cache_bucket=BUCKET)
    assert [r.status for r in records] == ["succeeded"] * 3
    identity = content_identity(images[0]["key"], s3.stat_object(BUCKET, images[0]["key"]).etag)
    assert get_json_or_none(s3, BUCKET, layout.cache_key(identity)) is None


def test_what_an_interrupted_planning_left_is_dropped(s3, config, base):
    """No pod runs before plan.json exists, so checkpoints and results without it are an earlier planning's
    reuse records, perhaps no longer true: a new planning starts from none."""
    spec = job_spec(base, "out1", SMALL)
    work = layout.work_prefix("test", "interrupted", base.split("/")[1])
    stale = [{"source": f"{base}/in/gone.jpg", "status": "succeeded", "error": None, "outputs": [], "seconds": 0,
              "reused": True}]
    for key in (layout.shard_key(work, 0), layout.checkpoint_key(work, 0, 0), layout.results_key(work, 0)):
        s3.put_object(BUCKET, key, io.BytesIO(json.dumps(stale).encode()), len(json.dumps(stale)))
    normalized = normalize_spec(spec)
    plan = storage.ensure_plan(s3, config, work, normalized, storage.placement_for(normalized, "test", "x", config))
    assert plan.reused == 0
    assert not object_exists(s3, BUCKET, layout.checkpoint_key(work, 0, 0))
    assert not object_exists(s3, BUCKET, layout.results_key(work, 0))
    assert len(get_json(s3, BUCKET, layout.shard_key(work, 0))["images"]) == 3


def test_cache_scopes_keep_tenants_apart():
    assert cache_scope("default", "alice") == "default/alice" != cache_scope("default", "bob")
    assert cache_scope("default", None) == "default/-"  # kubectl jobs share their namespace's
    assert scoped_identity("default/alice", "sha256-ab") == "default/alice/sha256-ab"
    assert scoped_identity("default/alice", None) is None and scoped_identity("", "etag-x") == "etag-x"
    for hostile in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(ValueError):
            cache_scope("default", hostile) if hostile else cache_scope(hostile, "alice")
