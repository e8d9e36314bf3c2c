"""The records that cross process boundaries (common/kresize_common/records.py): the stored JSON is exactly
what every program writes and reads, so renaming a field on one side only is impossible."""

from __future__ import annotations

from kresize_common.records import (
    ImageRef,
    ImageResult,
    ShardManifest,
    UploadedFile,
    UploadRecord,
    Variant,
    results_from_json,
    results_to_json,
)


def test_shard_manifest_round_trips_with_its_stored_field_names():
    manifest = ShardManifest(3, "src", "out", "results/ns/j/", ({"name": "t", "width": 8},), {"blur": 0},
                             (ImageRef("in/a.jpg", "a"),))
    stored = manifest.to_json()
    assert stored == {"index": 3, "sourceBucket": "src", "outputBucket": "out", "outputPrefix": "results/ns/j/",
                      "targets": [{"name": "t", "width": 8}], "operations": {"blur": 0},
                      "images": [{"key": "in/a.jpg", "id": "a"}]}
    assert ShardManifest.from_json(stored) == manifest


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
