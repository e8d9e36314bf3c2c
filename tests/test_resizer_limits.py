"""Output limits and the resizer's memory: real Pillow, real `kresize-resizer local` processes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, Target
from kresize_resizer.pipeline import ImageError, output_problem, render
from PIL import Image, ImageCms

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
LIMITS = ImageLimits()
POD_MEMORY = 1024 * 1024 * 1024  # the chart's resizer memory limit (1Gi)

# ru_maxrss of a child starts at its parent's high-water mark (vfork/fork, then exec keeps the maximum), so
# the test process, which just made a 200 MB image, must not be the parent: a small one in between is.
_MEASURE = ("import resource, subprocess, sys\n"
            "code = subprocess.call(sys.argv[1:])\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
            "sys.exit(code)\n")


def resizer_local(tmp_path: Path, inputs: Path, spec: dict, **env: str) -> tuple[list[dict], int, float]:
    """Run `kresize-resizer local`; its records, its peak resident memory in bytes, and its duration."""
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"spec": spec}))
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-c", _MEASURE, sys.executable, "-m", "kresize_resizer", "local", "--spec",
         str(tmp_path / "job.yaml"), "--input", str(inputs), "--output", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    peak = int(result.stdout.split()[-1]) * 1024  # KiB on Linux
    return json.loads((tmp_path / "out" / "results.json").read_text()), peak, elapsed


def png(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "PNG", **options)
    return out.getvalue()


def tiny_png() -> bytes:
    return png(Image.effect_noise((64, 64), 40).convert("RGB"))


HUGE = {"name": "huge", "width": 16384, "height": 16384, "fit": "fill", "upscale": True}


def test_a_64px_png_made_16384_square_fails_fast():
    """Was 1.8 GiB and 16 s of work for one variant nobody can use."""
    started = time.monotonic()
    with pytest.raises(ImageError, match=r"16384x16384 = 268435456 pixels.*KRESIZE_MAX_OUTPUT_PIXELS"):
        render(tiny_png(), [Target.from_dict(HUGE)], Operations(), LIMITS)
    assert time.monotonic() - started < 1


def test_a_64px_png_made_16384_square_fails_fast_in_a_real_run(tmp_path):
    """The same through `kresize-resizer local`: a failed record, in a fraction of a second, small."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tiny.png").write_bytes(tiny_png())
    (record,), peak, elapsed = resizer_local(tmp_path, tmp_path / "in", {"targets": [HUGE]})
    assert record["status"] == "failed" and "KRESIZE_MAX_OUTPUT_PIXELS" in record["error"]
    assert peak < 200 * 2**20, f"peak {peak / 2**20:.0f} MiB"
    assert elapsed < 30


def test_the_total_of_all_variants_is_limited():
    targets = [Target(f"t{i}", 6000, 6000, "fill", "jpeg", upscale=True) for i in range(3)]  # 36 MP each
    with pytest.raises(ImageError, match=r"108000000 pixels together.*KRESIZE_MAX_TOTAL_OUTPUT_PIXELS"):
        render(tiny_png(), targets, Operations(), LIMITS)


def test_output_limits_come_from_the_environment(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tiny.png").write_bytes(tiny_png())
    spec = {"targets": [{"name": "a", "width": 40, "height": 40}, {"name": "b", "width": 30, "height": 30}]}
    (record,), _, _ = resizer_local(tmp_path, tmp_path / "in", spec, KRESIZE_MAX_OUTPUT_PIXELS="1599")
    assert record["status"] == "failed" and "target a would be 40x40 = 1600" in record["error"]
    (record,), _, _ = resizer_local(tmp_path, tmp_path / "in", spec, KRESIZE_MAX_TOTAL_OUTPUT_PIXELS="2499")
    assert record["status"] == "failed" and "2500 pixels together" in record["error"]
    assert "KRESIZE_MAX_TOTAL_OUTPUT_PIXELS" in record["error"]
    (record,), _, _ = resizer_local(tmp_path, tmp_path / "in", spec, KRESIZE_MAX_OUTPUT_PIXELS="1600",
                                    KRESIZE_MAX_TOTAL_OUTPUT_PIXELS="2500")
    assert record["status"] == "succeeded"


def test_local_runs_refuse_files_over_the_byte_limit(tmp_path):
    """`local` reads at most KRESIZE_MAX_FILE_BYTES + 1 bytes of a file, as the pod downloads them."""
    (tmp_path / "in").mkdir()
    data = tiny_png()
    (tmp_path / "in" / "tiny.png").write_bytes(data)
    spec = {"targets": [{"name": "a", "width": 40}]}
    (record,), _, _ = resizer_local(tmp_path, tmp_path / "in", spec, KRESIZE_MAX_FILE_BYTES=str(len(data) - 1))
    assert record["status"] == "failed" and "KRESIZE_MAX_FILE_BYTES" in record["error"]
    (record,), _, _ = resizer_local(tmp_path, tmp_path / "in", spec, KRESIZE_MAX_FILE_BYTES=str(len(data)))
    assert record["status"] == "succeeded"


def test_output_limits_apply_to_the_upright_size():
    """Portrait_6.jpg is stored 1800x1200 and shown 1200x1800: 3000 wide makes it 3000x4500, not 3000x2000."""
    data = (CORPUS / "orientation" / "Portrait_6.jpg").read_bytes()
    target = Target("t", 3000, upscale=True, format="jpeg")
    with pytest.raises(ImageError, match="3000x4500"):
        render(data, [target], Operations(), ImageLimits(max_output_pixels=10_000_000))


def test_output_limits_are_checked_before_decoding():
    """A huge target on a file that would fail to decode: the limit is what fails it, no pixel decoded."""
    data = bytearray((CORPUS / "photos" / "DSCN0010.jpg").read_bytes())
    scan = data.rindex(b"\xff\xda")  # the photo's scan (the first one is in the EXIF thumbnail)
    data[scan + 5000:scan + 5006] = b"\xff\xc4\x00\x05\x00\xff"  # a bogus table inside the scan: corrupt
    with pytest.raises(ImageError, match="corrupt"):
        render(bytes(data), [Target("t", 100)], Operations(), LIMITS)
    with pytest.raises(ImageError, match="KRESIZE_MAX_OUTPUT_PIXELS"):
        render(bytes(data), [Target.from_dict(HUGE)], Operations(), LIMITS)


def test_avif_and_webp_with_transparency_get_a_quarter_of_the_variant_limit():
    """Their encoders need ~20 bytes per pixel (JPEG's and PNG's next to nothing): 12.5 MP by default."""
    quarter = LIMITS.max_output_pixels // 4
    side = 3536  # 3536^2 = 12,503,296 > 12,500,000 >= 3535^2
    big, fits = Target("t", side, side, "fill", "avif", upscale=True), Target("t", 3535, 3535, "fill", "avif")
    assert "AVIF target t would be 3536x3536" in (output_problem(5000, 5000, [big], "PNG", LIMITS) or "")
    assert str(quarter) in (output_problem(5000, 5000, [big], "PNG", LIMITS) or "")
    assert output_problem(5000, 5000, [fits], "PNG", LIMITS) is None
    webp = Target("t", side, side, "fill", "webp", upscale=True)
    assert "WebP with transparency" in (output_problem(5000, 5000, [webp], "PNG", LIMITS, alpha=True) or "")
    assert output_problem(5000, 5000, [webp], "PNG", LIMITS, alpha=False) is None  # ~5 bytes per pixel
    with pytest.raises(ImageError, match="AVIF target"):  # in render: before decoding or resizing anything
        render(tiny_png(), [big], Operations(), LIMITS)
    rgba = png(Image.new("RGBA", (64, 64), (1, 2, 3, 128)))
    with pytest.raises(ImageError, match="WebP with transparency"):
        render(rgba, [webp], Operations(), LIMITS)
    webp_side = Target("t", 16384, 100, "fill", "webp", upscale=True)
    assert "at most 16383 pixels per side" in (output_problem(64, 64, [webp_side], "PNG", LIMITS) or "")


def test_webp_inputs_get_half_the_pixel_limit():
    """Pillow's WebP decoder holds two canvases and a copy of the frame: ~16 bytes per pixel."""
    limits = ImageLimits(max_pixels=1000)
    image = Image.new("RGB", (30, 30), "red")  # 900 pixels: under the limit, over half of it
    webp = io.BytesIO()
    image.save(webp, "WEBP")
    with pytest.raises(ImageError, match="1/2 of KRESIZE_MAX_PIXELS"):
        render(webp.getvalue(), [Target("t", 10)], Operations(), limits)
    assert render(png(image), [Target("t", 10)], Operations(), limits)


def gradient_rgb(width: int, height: int) -> Image.Image:
    down = Image.linear_gradient("L").resize((width, height))
    return Image.merge("RGB", (down, down.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
                               down.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))


def test_a_tall_source_made_wider_resizes_through_the_smaller_intermediate(tmp_path):
    """1000x50000 (50 MP) to 3000x16384 (49 MP): resampling horizontally first needs a 3000x50000 buffer
    (600 MB), vertically first 1000x16384 (66 MB). Pillow 13 picks the smaller; the memory bound in the
    pipeline's docstring relies on it, so this pins it."""
    (tmp_path / "in").mkdir()
    gradient_rgb(1000, 50_000).save(tmp_path / "in" / "tall.png", compress_level=1)
    spec = {"targets": [{"name": "wide", "width": 3000, "height": 16384, "fit": "fill", "upscale": True,
                         "format": "jpeg"}]}
    (record,), peak, _ = resizer_local(tmp_path, tmp_path / "in", spec)
    print(f"tall to wider: peak RSS {peak / 2**20:.0f} MiB")
    assert record["status"] == "succeeded", record
    assert (record["outputs"][0]["width"], record["outputs"][0]["height"]) == (3000, 16384)
    assert peak < 700 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_worst_case_input_stays_under_the_pods_memory_limit(tmp_path):
    """The largest input and outputs the default limits let through, through every memory-hungry step.

    Inputs: a 50 MP RGBA PNG (just under 50 MiB) with EXIF orientation 6 (a rotated copy) and an ICC profile
    (converted), resized premultiplied; a WebP at its own input limit (25 MP: Pillow's WebP decoder needs
    ~16 bytes per pixel). First run: two 50 MP variants (100 MP, the total limit), sharpened (a blur keeps the
    variant, its result and a transposed copy), the first with the source still in memory; the 50 MP source
    stretched to another aspect ratio, the other padded with transparency, both flattened for JPEG. Second
    run: the formats whose encoders need ~20 bytes per pixel at their limit (12.5 MP): AVIF and WebP with
    transparency.
    """
    inputs, costly = tmp_path / "in", tmp_path / "in-costly"
    inputs.mkdir()
    costly.mkdir()
    width, height = 8660, 5773  # 49,994,180 pixels
    down = Image.linear_gradient("L").resize((width, height))
    noise = Image.effect_noise((width // 8, height // 8), 60).resize((width, height))
    rgba = Image.merge("RGBA", (down, down.transpose(Image.Transpose.FLIP_LEFT_RIGHT), noise,
                                down.transpose(Image.Transpose.FLIP_TOP_BOTTOM)))
    del down, noise
    exif = Image.Exif()
    exif[0x0112] = 6
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    rgba.save(inputs / "big.png", compress_level=1, exif=exif.tobytes(), icc_profile=srgb)
    assert (inputs / "big.png").stat().st_size < LIMITS.max_bytes
    os.link(inputs / "big.png", costly / "big.png")
    rgba.convert("RGB").resize((6124, 4082)).save(inputs / "big_webp.webp", quality=60, method=0)  # 24,998,168
    del rgba

    spec = {"operations": {"sharpen": 1}, "targets": [
        {"name": "a", "width": width, "height": height, "fit": "fill", "upscale": True, "format": "jpeg"},
        {"name": "b", "width": 7071, "height": 7071, "fit": "contain", "upscale": True, "format": "jpeg"},
    ]}
    sizes = [(width, height), (7071, 7071)]
    assert max(w * h for w, h in sizes) <= LIMITS.max_output_pixels
    assert sum(w * h for w, h in sizes) <= LIMITS.max_total_output_pixels
    # A 1 GiB pod renders one image at a time (cores.memory_workers); this machine has no memory limit to say so.
    records, peak, elapsed = resizer_local(tmp_path / "big", inputs, spec, KRESIZE_RENDER_WORKERS="1")
    print(f"worst case, two 50 MP variants: peak RSS {peak / 2**20:.0f} MiB in {elapsed:.0f} s")
    for record in records:
        assert record["status"] == "succeeded", record
        assert [(o["width"], o["height"]) for o in record["outputs"]] == sizes
    assert peak < POD_MEMORY, f"peak {peak / 2**20:.0f} MiB is over the pod's 1 GiB"

    spec = {"operations": {"sharpen": 1}, "targets": [
        {"name": "c", "width": 3535, "height": 3535, "fit": "cover", "upscale": True, "format": "avif"},
        {"name": "d", "width": 3535, "height": 3535, "fit": "contain", "upscale": True, "format": "webp"},
    ]}
    (record,), peak, elapsed = resizer_local(tmp_path / "costly", costly, spec)
    print(f"worst case, 12.5 MP AVIF and WebP with alpha: peak RSS {peak / 2**20:.0f} MiB in {elapsed:.0f} s")
    assert record["status"] == "succeeded", record
    assert peak < POD_MEMORY, f"peak {peak / 2**20:.0f} MiB is over the pod's 1 GiB"


@pytest.mark.parametrize(("operations", "targets"), [
    ({"blur": float("nan")}, [{"name": "t", "width": 10}]),
    ({"sharpen": float("inf")}, [{"name": "t", "width": 10}]),
])
def test_nan_and_infinity_in_a_local_spec_are_usage_errors(tmp_path, operations, targets):
    """YAML's .nan passes the schema's minimum/maximum (every comparison with NaN is false): the typed view
    refuses it before any image is read, and `local` exits 2 as for any invalid spec."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "tiny.png").write_bytes(tiny_png())
    (tmp_path / "job.yaml").write_text(yaml.safe_dump({"spec": {"targets": targets, "operations": operations}}))
    assert ".nan" in (tmp_path / "job.yaml").read_text() or ".inf" in (tmp_path / "job.yaml").read_text()
    result = subprocess.run([sys.executable, "-m", "kresize_resizer", "local", "--spec", str(tmp_path / "job.yaml"),
                             "--input", str(tmp_path / "in"), "--output", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "not a valid ResizeJob" in result.stderr and not (tmp_path / "out").exists()
