"""Upload inspection by content and the form -> spec mapping (pure functions)."""

import io
import json
from pathlib import Path

import pytest
from kresize_api.uploads import display_name, inspect_upload, spec_from_form
from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, SpecError, Target
from kresize_resizer.pipeline import render
from PIL import Image

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
LIMITS = ImageLimits()


def png_bytes(size=(4, 3)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "red").save(out, "PNG")
    return out.getvalue()


def test_accepts_a_real_photo_by_content_whatever_its_name():
    data = (CORPUS / "photos" / "DSCN0010.jpg").read_bytes()
    result = inspect_upload("holiday.png", data, LIMITS)
    assert result.error is None
    assert (result.extension, result.content_type) == ("jpg", "image/jpeg")
    assert result.width * result.height > 0 and len(result.sha256) == 64


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.jpg", "empty file"), ("text_pretending.jpg", "not a supported image"),
     ("decompression_bomb.gif", "too many pixels")],
)
def test_rejects_bad_uploads_with_a_reason(name, reason):
    result = inspect_upload(name, (CORPUS / "bad" / name).read_bytes(), LIMITS)
    assert result.error is not None and reason in result.error


def test_pixel_limit_is_configurable():
    assert inspect_upload("a.png", png_bytes((100, 100)), ImageLimits(max_pixels=9_999)).error.startswith(
        "too many pixels")
    assert inspect_upload("a.png", png_bytes((100, 100)), ImageLimits(max_pixels=10_000)).error is None


@pytest.mark.parametrize(
    ("raw", "shown"),
    [("../../etc/passwd", "passwd"), ("C:\\photos\\a.jpg", "a.jpg"), ("a\x00b\n.jpg", "ab.jpg"), ("", "unnamed"),
     (None, "unnamed")],
)
def test_filenames_are_never_paths(raw, shown):
    assert display_name(raw) == shown


def test_single_target_fields():
    spec = spec_from_form({"width": "320", "height": "240", "format": "webp", "grayscale": "true"})
    assert spec["targets"] == [{"name": "default", "width": 320, "height": 240, "fit": "cover", "format": "webp",
                                "quality": 80, "upscale": False, "background": "#ffffff"}]
    assert spec["operations"]["grayscale"] is True


def test_targets_as_json():
    targets = [{"name": "a", "width": 10}, {"name": "b", "height": 20, "fit": "inside"}]
    spec = spec_from_form({"targets": json.dumps(targets), "parallelism": "3"})
    assert [t["name"] for t in spec["targets"]] == ["a", "b"] and spec["parallelism"] == 3


@pytest.mark.parametrize(
    ("form", "message"),
    [({}, "width and/or height"), ({"width": "abc"}, "not a number"), ({"width": "0"}, "at least 1"),
     ({"width": "10", "fit": "stretch"}, "not one of"), ({"targets": "[{"}, "not valid JSON"),
     ({"targets": json.dumps([{"name": "a", "width": 1}, {"name": "a", "width": 2}])}, "Duplicate"),
     ({"width": "10", "targets": "[]"}, "not both"), ({"width": "10", "quality": "101"}, "at most 100")],
)
def test_invalid_parameters_are_explained(form, message):
    with pytest.raises(SpecError) as raised:
        spec_from_form(form)
    assert message in str(raised.value)


def mpo_bytes() -> bytes:
    """A camera-style JPEG with a second frame (Multi-Picture Format), which Pillow reports as MPO."""
    with Image.open(CORPUS / "photos" / "DSCN0010.jpg") as photo:
        first = photo.convert("RGB").resize((64, 48))
    out = io.BytesIO()
    first.save(out, "MPO", save_all=True, append_images=[first.resize((32, 24))])
    return out.getvalue()


def test_camera_mpo_jpegs_are_accepted_as_the_resizer_handles_them():
    data = mpo_bytes()
    assert Image.open(io.BytesIO(data)).format == "MPO"
    result = inspect_upload("camera.jpg", data, LIMITS)
    assert result.error is None and (result.extension, result.content_type) == ("jpg", "image/jpeg")
    (variant,) = render(data, [Target.from_dict({"name": "t", "width": 32})], Operations.from_dict(None), LIMITS)
    assert (variant.format, variant.width) == ("jpeg", 32)


def test_the_api_refuses_a_webp_the_resizer_would_refuse():
    """One table decides what share of the pixel limit a format may have, at upload and in the resizer."""
    out = io.BytesIO()
    Image.new("RGB", (30, 30), "red").save(out, "WEBP")
    result = inspect_upload("big.webp", out.getvalue(), ImageLimits(max_pixels=1000))
    assert result.reason == "pixels" and "1/2 of KRESIZE_MAX_PIXELS" in (result.error or "")
    assert inspect_upload("ok.png", png_bytes((30, 30)), ImageLimits(max_pixels=1000)).error is None
