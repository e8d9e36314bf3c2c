"""The image pipeline on real files with real Pillow (no mocks)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, Target
from kresize_resizer.pipeline import ImageError, output_size, render
from PIL import Image, ImageChops, ImageStat, JpegImagePlugin

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
LIMITS = ImageLimits()
NO_OPS = Operations()


def decoded(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def one(data: bytes, target: Target, operations: Operations = NO_OPS, limits: ImageLimits = LIMITS):
    (variant,) = render(data, [target], operations, limits)
    return variant, decoded(variant.data)


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


@pytest.mark.parametrize(
    ("source", "target", "size"),
    [
        ((1800, 1200), Target("t", 200, 200, "cover"), (200, 200)),
        ((1800, 1200), Target("t", 800, 800, "inside"), (800, 533)),
        ((1200, 1800), Target("t", 800, 800, "inside"), (533, 800)),
        ((1800, 1200), Target("t", 300, 200, "contain"), (300, 200)),
        ((1800, 1200), Target("t", 300, 300, "fill"), (300, 300)),
        ((1800, 1200), Target("t", 900), (900, 600)),  # one side: aspect ratio kept
        ((1800, 1200), Target("t", None, 300), (450, 300)),
        # no upscaling unless asked
        ((100, 68), Target("t", 200, 200, "cover"), (68, 68)),
        ((100, 68), Target("t", 200, 200, "cover", upscale=True), (200, 200)),
        ((100, 68), Target("t", 800, 800, "inside"), (100, 68)),
        ((100, 68), Target("t", 800, 800, "inside", upscale=True), (800, 544)),
        ((100, 68), Target("t", 300, 200, "contain"), (300, 200)),
        ((100, 68), Target("t", 300, 50, "fill"), (100, 50)),
        ((100, 68), Target("t", 1000), (100, 68)),
        ((100, 68), Target("t", 1000, upscale=True), (1000, 680)),
        ((3, 1000), Target("t", 10, 10, "inside"), (1, 10)),  # never 0 pixels
    ],
)
def test_output_size_rules(source, target, size):
    assert output_size(*source, target) == size


@pytest.mark.parametrize("name", [f"{kind}_{n}.jpg" for kind in ("Landscape", "Portrait") for n in range(9)])
def test_exif_orientation_is_applied(name):
    data = (CORPUS / "orientation" / name).read_bytes()
    variant, image = one(data, Target("t", 90, 90, "inside", "png"))
    assert (variant.width > variant.height) == name.startswith("Landscape")
    reference_name = name.split("_")[0] + "_1.jpg"
    _, reference = one((CORPUS / "orientation" / reference_name).read_bytes(), Target("t", 90, 90, "inside", "png"))
    difference = ImageStat.Stat(ImageChops.difference(image.convert("RGB"), reference.convert("RGB"))).mean
    assert max(difference) < 12, f"{name} does not look like {reference_name} after rotation: {difference}"


@pytest.mark.parametrize("path", sorted((CORPUS / "photos").glob("*.jpg")), ids=lambda p: p.name)
def test_every_photo_into_every_format(path):
    data = path.read_bytes()
    targets = [Target("a", 320, 240, "cover", "webp"), Target("b", 640, 640, "inside", "avif"),
               Target("c", 200, 200, "contain", "png"), Target("d", 500, 100, "fill", "jpeg"),
               Target("e", 256, format="original")]
    variants = render(data, targets, NO_OPS, LIMITS)
    with Image.open(path) as original:
        w, h = original.size
        if original.getexif().get(0x0112) in (5, 6, 7, 8):
            w, h = h, w
    for target, variant in zip(targets, variants, strict=True):
        image = decoded(variant.data)
        assert image.size == (variant.width, variant.height) == output_size(w, h, target)
        assert image.format == {"webp": "WEBP", "avif": "AVIF", "png": "PNG", "jpeg": "JPEG"}[variant.format]
        assert variant.format == (target.format if target.format != "original" else "jpeg")
        assert not image.getexif(), "metadata must be stripped"
        assert "icc_profile" not in image.info and "xmp" not in image.info


@pytest.mark.parametrize(
    ("name", "reason"),
    [("empty.jpg", "empty file"), ("text_pretending.jpg", "not an image"), ("broken.png", "not an image"),
     ("decompression_bomb.gif", "too many pixels"), ("truncated_DSCN0010.jpg", "truncated")],
)
def test_bad_inputs_fail_with_a_reason(name, reason):
    with pytest.raises(ImageError, match=reason):
        render((CORPUS / "bad" / name).read_bytes(), [Target("t", 10, 10)], NO_OPS, LIMITS)


def test_limits_are_configurable():
    data = (CORPUS / "photos" / "DSCN0010.jpg").read_bytes()  # 640x480
    with pytest.raises(ImageError, match="KRESIZE_MAX_PIXELS"):
        render(data, [Target("t", 10)], NO_OPS, ImageLimits(max_pixels=640 * 480 - 1))
    with pytest.raises(ImageError, match="KRESIZE_MAX_FILE_BYTES"):
        render(data, [Target("t", 10)], NO_OPS, ImageLimits(max_bytes=len(data) - 1))
    assert render(data, [Target("t", 10)], NO_OPS, ImageLimits(max_pixels=640 * 480, max_bytes=len(data)))


def test_jpeg_draft_decodes_no_larger_than_needed(monkeypatch):
    requested = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        requested.append(size)
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    data = (CORPUS / "photos" / "jolla.jpg").read_bytes()  # 3264x2448
    variant, _ = one(data, Target("t", 300, 300, "cover", "jpeg"))
    assert requested == [(400, 300)]  # cover of 300x300 needs 400x300 of a 4:3 source, never less
    assert (variant.width, variant.height) == (300, 300)


def test_alpha_is_flattened_for_jpeg_and_kept_for_png_and_webp():
    rgba = Image.new("RGBA", (40, 40), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (10, 10, 30, 30))
    data = png(rgba)
    _, jpeg = one(data, Target("t", 40, 40, format="jpeg", background=(0, 255, 0)))
    assert jpeg.mode == "RGB"
    r, g, b = jpeg.getpixel((2, 2))
    assert g > 200 and r < 60 and b < 60  # transparent corner became the background
    for fmt in ("png", "webp"):
        _, out = one(data, Target("t", 40, 40, format=fmt))
        assert out.mode == "RGBA" and out.getpixel((2, 2))[3] == 0 and out.getpixel((20, 20))[3] == 255


def test_palette_with_transparency_and_cmyk_inputs():
    palette = Image.new("P", (20, 20), 0)
    palette.putpalette([255, 255, 255, 0, 0, 0] + [0] * 762)
    palette.info["transparency"] = 0
    _, out = one(png(palette), Target("t", 10, 10, format="png"))
    assert out.mode == "RGBA" and out.getpixel((5, 5))[3] == 0

    cmyk = io.BytesIO()
    Image.new("CMYK", (30, 30), (255, 0, 0, 0)).save(cmyk, "JPEG", quality=95)  # pure cyan
    _, out = one(cmyk.getvalue(), Target("t", 10, 10, format="png"))
    r, g, b = out.convert("RGB").getpixel((5, 5))
    assert r < 60 and g > 180 and b > 180


def test_embedded_icc_profile_is_converted_and_dropped():
    data = (CORPUS / "photos" / "Canon_40D.jpg").read_bytes()  # carries an ICC profile
    with Image.open(io.BytesIO(data)) as source:
        assert source.info.get("icc_profile")
    _, out = one(data, Target("t", 50, format="jpeg"))
    assert "icc_profile" not in out.info


def test_operations_change_pixels():
    data = (CORPUS / "photos" / "DSCN0010.jpg").read_bytes()
    target = Target("t", 200, 150, "fill", "png")
    _, plain = one(data, target)
    _, gray = one(data, target, Operations(grayscale=True))
    assert gray.mode == "L"
    _, blurred = one(data, target, Operations(blur=3))
    _, sharp = one(data, target, Operations(sharpen=2))

    def edges(image: Image.Image) -> float:
        g = image.convert("L")
        return ImageStat.Stat(ImageChops.difference(g, g.transform(g.size, Image.Transform.AFFINE,
                                                                     (1, 0, 1, 0, 1, 0)))).mean[0]
    assert edges(blurred) < edges(plain) * 0.7
    assert edges(sharp) > edges(plain)


def test_quality_changes_size():
    data = (CORPUS / "photos" / "jolla.jpg").read_bytes()
    low, _ = one(data, Target("t", 600, format="webp", quality=20))
    high, _ = one(data, Target("t", 600, format="webp", quality=95))
    assert len(low.data) * 2 < len(high.data)


def test_original_format_keeps_modern_formats_and_maps_others_to_png():
    gif = io.BytesIO()
    Image.new("P", (20, 20)).save(gif, "GIF")
    variant, _ = one(gif.getvalue(), Target("t", 10))
    assert variant.format == "png"
    webp = io.BytesIO()
    Image.new("RGB", (20, 20)).save(webp, "WEBP")
    variant, _ = one(webp.getvalue(), Target("t", 10))
    assert variant.format == "webp"


def test_16_bit_grayscale_keeps_its_range():
    import struct

    values = [round(i * 65535 / 4095) for i in range(4096)]  # a 64x64 ramp over the whole 16-bit range
    image = Image.frombytes("I;16", (64, 64), struct.pack("<4096H", *values))
    _, out = one(png(image), Target("t", 32, format="png"))
    assert out.mode == "L" and out.size == (32, 32)
    low, high = out.getextrema()
    assert low < 10 and high > 245  # scaled to 8 bits, not clipped to white
