"""The records that cross process boundaries (common/kresize_common/records.py): the stored JSON is exactly
what every program writes and reads, so renaming a field on one side only is impossible."""

from __future__ import annotations

import pytest
from kresize_common.records import (
    CachedVariant,
    ImageRef,
    ImageResult,
    ShardManifest,
    UploadedFile,
    UploadRecord,
    Variant,
    heartbeat_is_fresh,
    heartbeat_json,
    results_from_json,
    results_to_json,
)


def test_shard_manifest_round_trips_with_its_stored_field_names():
    manifest = ShardManifest(3, "src", "out", "results/ns/j/", ({"name": "t", "width": 8},), {"blur": 0},
                             (ImageRef("in/a.jpg", "a"),), cache_scope="ns/alice")
    stored = manifest.to_json()
    assert stored == {"index": 3, "sourceBucket": "src", "outputBucket": "out", "outputPrefix": "results/ns/j/",
                      "targets": [{"name": "t", "width": 8}], "operations": {"blur": 0},
                      "images": [{"key": "in/a.jpg", "id": "a"}], "cacheScope": "ns/alice"}
    assert ShardManifest.from_json(stored) == manifest
    del stored["cacheScope"]  # a manifest written before the field: no scope
    assert ShardManifest.from_json(stored).cache_scope == ""


def test_image_results_round_trip():
    results = [ImageResult.succeeded("a.jpg", [Variant("t", "o/a/t.jpg", 8, 6, "jpeg", 321)], 0.125),
               ImageResult.failed("b.jpg", "not an image")]
    stored = results_to_json(results)
    assert stored[0] == {"source": "a.jpg", "status": "succeeded", "error": None, "outputs": [
        {"target": "t", "path": "o/a/t.jpg", "width": 8, "height": 6, "format": "jpeg", "bytes": 321}],
        "seconds": 0.125}
    assert stored[1] == {"source": "b.jpg", "status": "failed", "error": "not an image", "outputs": [], "seconds": 0}
    assert results_from_json(stored) == results


def test_upload_record_round_trips_and_names_its_originals():
    record = UploadRecord((UploadedFile("a.png", 10, "ab", None, "originals/ab.png"),
                           UploadedFile("b.txt", 3, "cd", "not an image", None)), created_at="2026-11-23T12:00:00Z")
    stored = record.to_json()
    assert stored["files"][0] == {"filename": "a.png", "bytes": 10, "sha256": "ab", "error": None,
                                  "source": "originals/ab.png"}
    assert UploadRecord.from_json(stored) == record
    assert record.sources == {"originals/ab.png"}


def test_a_reused_image_says_so_and_older_records_read_as_made():
    variant = Variant("t", "o/a/t.jpg", 8, 6, "jpeg", 321)
    reused = ImageResult("a.jpg", "succeeded", outputs=(variant,), reused=True)
    stored = reused.to_json()
    assert stored["reused"] is True
    assert ImageResult.from_json(stored) == reused
    made = ImageResult.succeeded("a.jpg", [variant], 0.5)
    assert "reused" not in made.to_json()  # stored only when true: every record before it reads the same
    assert ImageResult.from_json(made.to_json()) == made and not made.reused
    assert ImageResult.from_json({**made.to_json(), "reused": False}).reused is False


def test_cached_variant_round_trips_with_its_stored_field_names():
    entry = CachedVariant("out", "results/ns/j/a/t.webp", 64, 48, "webp", 1234, "5d41402abc4b2a76b9719d911017c592")
    stored = entry.to_json()
    assert stored == {"bucket": "out", "path": "results/ns/j/a/t.webp", "width": 64, "height": 48, "format": "webp",
                      "bytes": 1234, "etag": "5d41402abc4b2a76b9719d911017c592"}
    assert CachedVariant.from_json(stored) == entry


@pytest.mark.parametrize(("raw", "now", "fresh"), [
    (heartbeat_json(1000.0), 1000.0, True),
    (heartbeat_json(1000.0), 1029.5, True),
    (heartbeat_json(1000.0), 1030.0, True),
    (heartbeat_json(1000.0), 1030.5, False),  # the pod stopped beating (killed before it could delete it)
    (heartbeat_json(1000.0), 990.0, True),  # the reader's clock is a little behind the pod's
    (heartbeat_json(1000.0), 900.0, False),  # far in the future: not to be trusted forever
    ({"at": 1000}, 1010.0, True),
    (None, 1000.0, False),  # no heartbeat: no pod works on it
    ({}, 1000.0, False),
    ({"at": "1000"}, 1000.0, False),
    ({"at": True}, 1.0, False),
    ({"at": float("nan")}, 1000.0, False),
])
def test_heartbeat_is_fresh(raw, now, fresh):
    assert heartbeat_is_fresh(raw, now) is fresh


def test_heartbeat_max_age_is_the_readers():
    assert heartbeat_is_fresh(heartbeat_json(1000.0), 1050.0, max_age=60.0)
    assert not heartbeat_is_fresh(heartbeat_json(1000.0), 1010.0, max_age=5.0)
