"""The image pipeline on real files with real Pillow (no mocks)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, SpecError, Target
from kresize_resizer.local import run_local
from kresize_resizer.pipeline import ImageError, output_size, render, render_each
from PIL import Image, ImageChops, ImageOps, ImageStat, JpegImagePlugin

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


def test_integral_floats_from_json_are_sizes():
    """JSON writers may emit 10.0 for 10, and `type: integer` accepts it: such a target must work."""
    target = Target.from_dict({"name": "t", "width": 64.0, "height": 48.0, "quality": 90.0, "fit": "fill",
                               "format": "jpeg"})
    assert (target.width, target.height, target.quality) == (64, 48, 90)
    assert all(type(v) is int for v in (target.width, target.height, target.quality))
    (variant,) = render((CORPUS / "photos" / "DSCN0010.jpg").read_bytes(), [target], NO_OPS, LIMITS)
    assert (variant.width, variant.height) == (64, 48)


@pytest.mark.parametrize("raw", [
    {"width": 10.5}, {"width": float("nan")}, {"height": float("inf")}, {"width": -float("inf")},
    {"width": True}, {"width": "10"}, {"width": 0}, {"width": 10, "quality": float("nan")}, {},
])
def test_sizes_that_are_not_whole_numbers_never_reach_pillow(raw):
    with pytest.raises(SpecError):
        Target.from_dict({"name": "t", **raw})


@pytest.mark.parametrize("raw", [{"blur": float("nan")}, {"sharpen": float("inf")}, {"blur": -1}, {"blur": "2"}])
def test_radii_that_are_not_finite_never_reach_pillow(raw):
    with pytest.raises(SpecError):
        Operations.from_dict(raw)
    assert Operations.from_dict({"blur": 2, "sharpen": 1.5}) == Operations(blur=2.0, sharpen=1.5)


def test_big_endian_16_bit_grayscale_is_resized():
    """I;16B (a big-endian 16-bit TIFF) once raised ValueError from point(), outside any handler."""
    import struct

    image = Image.frombytes("I;16B", (64, 64), struct.pack(">4096H", *([40000] * 32 + [0] * 32) * 64))
    tiff = io.BytesIO()
    image.save(tiff, "TIFF")
    _, out = one(tiff.getvalue(), Target("t", 32, format="png"))
    assert out.mode == "L" and out.size == (32, 32)
    assert abs(out.getpixel((4, 16)) - 40000 / 257) <= 1 and out.getpixel((28, 16)) == 0


def test_rgba_is_resized_as_pillow_resizes_it():
    """The source is premultiplied once (Pillow would convert it on every resize): the same pixels."""
    noise = Image.effect_noise((300, 200), 80)
    rgba = Image.merge("RGBA", (noise, noise.rotate(90, expand=False), noise.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                                Image.linear_gradient("L").resize((300, 200))))
    for target in (Target("t", 120, 90, "fill", "png"), Target("t", 100, 100, "cover", "png")):
        _, out = one(png(rgba), target)
        expected = rgba.resize((120, 90), Image.Resampling.LANCZOS, reducing_gap=3.0) if target.fit == "fill" \
            else ImageOps.fit(rgba, (100, 100), Image.Resampling.LANCZOS)
        assert out.mode == "RGBA" and ImageChops.difference(out, expected).getextrema() == ((0, 0),) * 4


def test_variants_are_made_smallest_first_and_listed_in_the_targets_order(tmp_path):
    """The largest variant is made last, after the source is freed; records keep the spec's order."""
    targets = [Target("big", 600, format="png"), Target("small", 50, format="png"), Target("mid", 200, format="png")]
    data = (CORPUS / "photos" / "DSCN0010.jpg").read_bytes()
    assert [v.target for v in render_each(data, targets, NO_OPS, LIMITS)] == ["small", "mid", "big"]
    assert [v.target for v in render(data, targets, NO_OPS, LIMITS)] == ["big", "small", "mid"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "photo.jpg").write_bytes(data)
    spec = {"targets": [{"name": t.name, "width": t.width, "format": "png"} for t in targets]}
    (record,) = run_local(spec, tmp_path / "in", tmp_path / "out", LIMITS)
    assert [o.target for o in record.outputs] == ["big", "small", "mid"]
