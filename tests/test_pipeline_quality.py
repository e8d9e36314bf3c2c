"""The pipeline's shortcuts (JPEG draft, whole-factor reduce, Lanczos with a reducing gap of 2, smaller targets
resampled from larger ones, colour converted after shrinking) checked against a straightforward rendering:
full decode, rotate, convert colour, one Lanczos resample per target from the full image, no shortcut.

Numpy-free metrics (Pillow only): PSNR over every channel, a block SSIM on luma (8x8 windows, the usual
constants) and CIE76 colour differences. Outputs are PNG so no encoder noise hides or adds a difference.
Measured on the corpus (Pillow 13.0): PSNR 46-56 dB and SSIM >= 0.996 for every variant (the pipeline before
these shortcuts: 47-57 dB; they differ from each other by 46-55 dB); deferring an Adobe RGB or Display P3
conversion: mean dE76 0.2-0.6, 99th percentile <= 2.2 (the Lab measurement's own step is ~1).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
from iccprofiles import ADOBE_RGB, DISPLAY_P3, LINEAR_SRGB, PROPHOTO_RGB
from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, Target
from kresize_resizer.pipeline import (
    ENCODING,
    Encoding,
    Sampling,
    _stored_box,
    _upright_box,
    decode,
    output_size,
    plan,
    render,
    sampling,
)
from PIL import Image, ImageChops, ImageCms, ImageMath, ImageOps

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
PHOTOS = sorted((CORPUS / "photos").glob("*.jpg"))
LIMITS = ImageLimits()
NO_OPS = Operations()
SRGB = ImageCms.createProfile("sRGB")
THREE = [Target("large", 1280, 1280, "inside", "png"), Target("card", 320, 240, "cover", "png"),
         Target("icon", 64, 64, "cover", "png")]
SRCSET = [Target(f"w{width}", width, format="png") for width in (1600, 1066, 710, 473, 315, 210)]  # 1.5x steps
MIN_PSNR = 44.0  # dB; measured minimum 46.3
MIN_SSIM = 0.995  # measured minimum 0.9964


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio over every channel, from the histogram of absolute differences."""
    histogram = ImageChops.difference(a, b).histogram()
    squares = sum(count * (level % 256) ** 2 for level, count in enumerate(histogram))
    mse = squares / (len(histogram) // 256 * a.width * a.height)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def _mean(image: Image.Image) -> float:
    value = image.resize((1, 1), Image.Resampling.BOX).getpixel((0, 0))  # ImageStat cannot average F images
    assert isinstance(value, float)
    return value


def ssim(a: Image.Image, b: Image.Image, block: int = 8) -> float:
    """Mean SSIM of luma over non-overlapping block x block windows."""
    x, y = a.convert("L").convert("F"), b.convert("L").convert("F")
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def local(image: Image.Image) -> Image.Image:
        return image.reduce(block)

    mx, my = local(x), local(y)
    xx = local(ImageMath.lambda_eval(lambda e: e["x"] * e["x"], x=x))
    yy = local(ImageMath.lambda_eval(lambda e: e["y"] * e["y"], y=y))
    xy = local(ImageMath.lambda_eval(lambda e: e["x"] * e["y"], x=x, y=y))
    index = ImageMath.lambda_eval(
        lambda e: (2 * e["mx"] * e["my"] + c1) * (2 * (e["xy"] - e["mx"] * e["my"]) + c2)
        / ((e["mx"] * e["mx"] + e["my"] * e["my"] + c1)
           * (e["xx"] - e["mx"] * e["mx"] + e["yy"] - e["my"] * e["my"] + c2)),
        mx=mx, my=my, xx=xx, yy=yy, xy=xy)
    return _mean(index)


_TO_LAB = ImageCms.buildTransform(SRGB, ImageCms.createProfile("LAB"), "RGB", "LAB")


def delta_e(a: Image.Image, b: Image.Image) -> tuple[float, float]:
    """Mean and 99th percentile of CIE76 dE between two sRGB images (8-bit Lab: L steps 0.39, a and b 1)."""
    lab_a, lab_b = (ImageCms.applyTransform(image.convert("RGB"), _TO_LAB) for image in (a, b))
    assert lab_a is not None and lab_b is not None
    bands = {f"{name}{i}": band.convert("F") for i, lab in enumerate((lab_a, lab_b))
             for name, band in zip("Lab", lab.split(), strict=True)}
    scale = (100 / 255) ** 2  # Pillow's 8-bit L* is 0..255
    de = ImageMath.lambda_eval(
        lambda e: ((e["L0"] - e["L1"]) * (e["L0"] - e["L1"]) * scale + (e["a0"] - e["a1"]) * (e["a0"] - e["a1"])
                   + (e["b0"] - e["b1"]) * (e["b0"] - e["b1"])) ** 0.5, **bands)
    tenths = ImageMath.lambda_eval(lambda e: e["d"] * 10, d=de).convert("L").histogram()
    total, seen = sum(tenths), 0
    for level, count in enumerate(tenths):
        seen += count
        if seen >= 0.99 * total:
            return _mean(de), level / 10
    raise AssertionError("unreachable")


def reference(data: bytes, target: Target) -> Image.Image:
    """The straightforward rendering: full decode, rotate, colour to sRGB, one Lanczos from the full image."""
    image = Image.open(io.BytesIO(data))
    image.load()
    profile = image.info.get("icc_profile")
    image = ImageOps.exif_transpose(image)
    if profile:
        converted = ImageCms.profileToProfile(image, ImageCms.ImageCmsProfile(io.BytesIO(profile)), SRGB,
                                              outputMode=image.mode)
        assert converted is not None
        image = converted
    size = output_size(*image.size, target)
    if target.fit == "cover" and target.width and target.height:
        return ImageOps.fit(image, size, Image.Resampling.LANCZOS)
    return image.resize(size, Image.Resampling.LANCZOS)


def pixels(variant_data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(variant_data))
    image.load()
    return image


def assert_close(data: bytes, targets: list[Target]) -> None:
    for target, variant in zip(targets, render(data, targets, NO_OPS, LIMITS), strict=True):
        out, ref = pixels(variant.data), reference(data, target)
        assert out.size == ref.size
        out, ref = out.convert(ref.mode), ref
        quality = psnr(out, ref), ssim(out, ref)
        assert quality[0] >= MIN_PSNR and quality[1] >= MIN_SSIM, f"{target.name}: PSNR {quality[0]:.1f} dB, " \
                                                                  f"SSIM {quality[1]:.4f}"


@pytest.mark.parametrize("path", PHOTOS, ids=lambda p: p.name)
def test_three_targets_look_like_the_straightforward_rendering(path):
    assert_close(path.read_bytes(), THREE)


@pytest.mark.parametrize("name", ["jolla.jpg", "Reconyx_HC500_Hyperfire.jpg", "canon_hdr_NO.jpg"])
def test_a_srcset_chain_resampled_from_each_other_looks_like_the_straightforward_rendering(name):
    """Six widths 1.5x apart: each is made from the next larger one (a chain of five Lanczos steps)."""
    data = (CORPUS / "photos" / name).read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        size = image.size
    samplings = [sampling(*size, target) for target in SRCSET]
    parents = plan(samplings, 4_000_000)
    assert parents[-1] == len(SRCSET) - 2, "the smallest comes from the next larger one"
    assert_close(data, SRCSET)


def test_png_with_alpha_is_reduced_once_and_looks_like_the_straightforward_rendering():
    """A 2048x1536 PNG with an alpha gradient: reduced by a whole factor right after decoding (premultiplied),
    then each target; compared as a viewer sees it, over grey."""
    photo = Image.open(CORPUS / "photos" / "Reconyx_HC500_Hyperfire.jpg").convert("RGB")
    alpha = Image.linear_gradient("L").resize(photo.size)
    rgba = photo.copy()
    rgba.putalpha(alpha)
    out = io.BytesIO()
    rgba.save(out, "PNG", compress_level=1)
    data = out.getvalue()
    targets = [Target("card", 320, 240, "cover", "png"), Target("icon", 64, 64, "cover", "png")]
    assert decode(data, targets, LIMITS).image.size == (683, 512), "reduced by 3: 6.4x for the 320 wide target"
    for target, variant in zip(targets, render(data, targets, NO_OPS, LIMITS), strict=True):
        ref = reference(data, target)
        grey = Image.new("RGBA", ref.size, (128, 128, 128, 255))
        seen, expected = (Image.alpha_composite(grey, image.convert("RGBA")).convert("RGB")
                          for image in (pixels(variant.data), ref))
        assert psnr(seen, expected) >= MIN_PSNR and ssim(seen, expected) >= MIN_SSIM
        assert psnr(pixels(variant.data).getchannel("A"), ref.getchannel("A")) >= MIN_PSNR


def _tagged(profile: bytes, realistic: bool) -> tuple[bytes, bytes]:
    """A corpus photo as a PNG in the given colour space, and the same converted to sRGB at full size first.
    `realistic`: the photo's colours converted into the space (as a camera writes them); otherwise its sRGB
    values taken as the space's, far more saturated (the worst case for gamut clipping)."""
    photo = Image.open(CORPUS / "photos" / "Reconyx_HC500_Hyperfire.jpg").convert("RGB")
    space = ImageCms.ImageCmsProfile(io.BytesIO(profile))
    if realistic:
        converted = ImageCms.profileToProfile(photo, SRGB, space, outputMode="RGB")
        assert converted is not None
        photo = converted
    first = ImageCms.profileToProfile(photo, space, SRGB, outputMode="RGB")
    assert first is not None
    tagged, untagged = io.BytesIO(), io.BytesIO()
    photo.save(tagged, "PNG", compress_level=1, icc_profile=profile)
    first.save(untagged, "PNG", compress_level=1)
    return tagged.getvalue(), untagged.getvalue()


@pytest.mark.parametrize("realistic", [True, False], ids=["camera-colours", "saturated"])
@pytest.mark.parametrize("profile", [ADOBE_RGB, DISPLAY_P3], ids=["adobe-rgb", "display-p3"])
def test_colour_converted_after_shrinking_stays_within_a_small_delta_e(profile, realistic):
    """Same pipeline, same resampling; the only difference is converting the 2048x1536 original first or the
    resampled images after: the colour error that saves (the 1280 variant: 2.4x fewer pixels to convert)."""
    tagged, converted_first = _tagged(profile, realistic)
    assert decode(tagged, THREE, LIMITS).transform is not None, "deferred"
    for after, first in zip(render(tagged, THREE, NO_OPS, LIMITS), render(converted_first, THREE, NO_OPS, LIMITS),
                            strict=True):
        mean, p99 = delta_e(pixels(after.data), pixels(first.data))
        assert mean <= 1.0 and p99 <= 3.0, f"{after.target}: mean dE {mean:.2f}, 99th percentile {p99:.1f}"


@pytest.mark.parametrize("profile", [PROPHOTO_RGB, LINEAR_SRGB], ids=["prophoto", "linear"])
def test_profiles_far_from_srgb_tone_are_converted_before_resampling(profile):
    tagged, converted_first = _tagged(profile, realistic=True)
    assert decode(tagged, THREE, LIMITS).transform is None, "converted at decode"
    for after, first in zip(render(tagged, THREE, NO_OPS, LIMITS), render(converted_first, THREE, NO_OPS, LIMITS),
                            strict=True):
        assert pixels(after.data).tobytes() == pixels(first.data).tobytes()


def test_plan_derives_each_target_from_the_smallest_larger_one_within_the_budget():
    three = [sampling(2048, 1536, target) for target in THREE]
    assert plan(three, 4_000_000) == [None, 0, 1]  # 320x240 from the 1280, 64x64 from the 320x240
    assert plan(three, 100_000) == [None, None, 1]  # the 1280 is too large to keep: only the 320x240 is kept
    same = [sampling(2048, 1536, Target(name, 320, 240, "cover", fmt)) for name, fmt in (("a", "jpeg"), ("b", "webp"))]
    assert plan(same, 10**6) == [None, 0], "one resample for the same size in two formats"
    # A crop that reaches outside the larger target's region is made from the source.
    wide = sampling(2048, 1536, Target("w", 400, 100, "cover"))
    assert plan([wide, sampling(2048, 1536, Target("t", 50, 100, "cover"))], 10**6) == [None, None]
    # Too little denser (1.2x) to be worth a second Lanczos step.
    assert plan([Sampling((0, 0, 100, 100), (60, 60)), Sampling((0, 0, 100, 100), (50, 50))], 10**6) == [None, None]


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_box_follows_pillows_transposes(orientation):
    """A marked pixel's box in the stored image lands where Pillow's EXIF transpose puts the pixel."""
    stored = Image.new("L", (7, 4), 0)
    stored.putpixel((1, 2), 255)
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.info["exif"] = exif.tobytes()
    upright = ImageOps.exif_transpose(stored)
    x0, y0, x1, y1 = _upright_box((1, 2, 2, 3), stored.size, orientation)
    assert (x1 - x0, y1 - y0) == (1, 1)
    assert upright.getpixel((int(x0), int(y0))) == 255


def test_encoder_defaults_are_the_measured_ones_and_can_be_overridden():
    """docs/design.md, "Encoder settings": baseline JPEG with optimised Huffman tables by default."""
    data = (CORPUS / "photos" / "DSCN0010.jpg").read_bytes()
    target = Target("t", 320, format="jpeg")
    assert Encoding(jpeg_optimize=True, jpeg_progressive=False, webp_method=4, avif_speed=8,
                                png_compress_level=6) == ENCODING
    (plain,) = render(data, [target], NO_OPS, LIMITS)
    (progressive,) = render(data, [target], NO_OPS, LIMITS, Encoding(jpeg_progressive=True))
    assert not pixels(plain.data).info.get("progressive") and pixels(progressive.data).info.get("progressive")
    (baseline,) = render(data, [target], NO_OPS, LIMITS, Encoding(jpeg_optimize=False))
    assert len(plain.data) < len(baseline.data)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_box_undoes_upright_box(orientation):
    stored = (7, 4)
    box = (1.0, 0.5, 3.25, 2.0)
    upright = _upright_box(box, stored, orientation)
    size = (stored[1], stored[0]) if orientation >= 5 else stored
    assert _stored_box(upright, size, orientation) == pytest.approx(box)
