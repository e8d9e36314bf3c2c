"""Corruption inside the compressed image data, format by format, on real photos (no mocks).

Each file is a corpus photo converted in memory, with bytes flipped or overwritten *inside* its compressed
image data. What Pillow can detect must fail the image with a reason; what no signal reaches us for is pinned by
a test named `..._decodes_silently...`, so a change in Pillow (or in the pipeline) shows up here. The
pipeline's docstring explains every case.
"""

from __future__ import annotations

import io
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import yaml
from kresize_common.config import ImageLimits
from kresize_common.spec import Operations, Target
from kresize_resizer import pipeline
from kresize_resizer.pipeline import ImageError, _check_png, render
from PIL import Image, ImageChops

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
LIMITS = ImageLimits()
FULL = [Target("t", 640, 480, "fill", "png")]  # the photo's own size: the variant is the decoded pixels
SMALL = [Target("t", 80, 60, "inside", "png")]  # lets a JPEG decode with draft (scaled DCT)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    with Image.open(CORPUS / "photos" / "DSCN0010.jpg") as image:  # 640x480 camera JPEG
        return image.convert("RGB")


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def xor(data: bytes, position: int, pattern: bytes) -> bytes:
    corrupt = bytearray(data)
    for offset, value in enumerate(pattern):
        corrupt[position + offset] ^= value
    return bytes(corrupt)


def overwrite(data: bytes, position: int, replacement: bytes) -> bytes:
    return data[:position] + replacement + data[position + len(replacement):]


def pixels(data: bytes, targets=FULL) -> Image.Image:
    (variant,) = render(data, targets, Operations(), LIMITS)
    with Image.open(io.BytesIO(variant.data)) as image:
        return image.convert("RGB")


def assert_silently_different(clean: bytes, corrupt: bytes) -> None:
    """The corrupt file renders without any error, to pixels that differ from the clean file's."""
    assert ImageChops.difference(pixels(clean), pixels(corrupt)).getbbox() is not None


# ---- PNG ----------------------------------------------------------------------------------------------------


@pytest.fixture(params=["inflated-once", "streamed"])
def png_check(request, monkeypatch) -> str:
    """Both ways the PNG check runs: image data inflated once and handed to Pillow stored, and (over
    _STORED_PNG_MAX) inflated in a streamed check, then again by Pillow."""
    if request.param == "streamed":
        monkeypatch.setattr(pipeline, "_STORED_PNG_MAX", 0)
    return request.param


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]]:
    """(type, offset of the chunk's length field, data length) of every chunk."""
    chunks, position = [], 8
    while position < len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        chunks.append((kind, position, length))
        position += 12 + length
    return chunks


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def fix_crcs(data: bytes) -> bytes:
    """Recompute every chunk's CRC, as a writer that corrupted the data before checksumming it would."""
    fixed = bytearray(data)
    for _, position, length in png_chunks(data):
        end = position + 8 + length
        fixed[end:end + 4] = struct.pack(">I", zlib.crc32(fixed[position + 4:end]))
    return bytes(fixed)


def idat_position(data: bytes, fraction: float) -> int:
    """The file offset of the byte at `fraction` of the concatenated IDAT data."""
    idats = [(position + 8, length) for kind, position, length in png_chunks(data) if kind == b"IDAT"]
    wanted = min(int(sum(length for _, length in idats) * fraction), sum(length for _, length in idats) - 1)
    for start, length in idats:
        if wanted < length:
            return start + wanted
        wanted -= length
    raise AssertionError("unreachable")


def png_from_rows(width: int, height: int, rows: bytes, *extra_after_idat: bytes) -> bytes:
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return (b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(rows)) + b"".join(extra_after_idat)
            + png_chunk(b"IEND", b""))


@pytest.mark.parametrize("crc", ["stale", "fixed"])
def test_png_with_a_corrupt_idat_chunk_fails(photo, crc, png_check):
    """The original bug: this file was `succeeded` with its lower part black."""
    data = encoded(photo, "PNG")
    assert sum(1 for kind, _, _ in png_chunks(data) if kind == b"IDAT") > 3
    corrupt = xor(data, idat_position(data, 0.5), b"\x5a" * 16)
    if crc == "fixed":
        corrupt = fix_crcs(corrupt)
    with pytest.raises(ImageError, match="CRC" if crc == "stale" else "corrupt") as failure:
        render(corrupt, FULL, Operations(), LIMITS)
    if crc == "stale":
        assert "'IDAT'" in str(failure.value)


@pytest.mark.parametrize("fraction", [0.02, 0.5, 0.98, 0.9999])
@pytest.mark.parametrize("level", [0, 6])  # stored blocks, and deflate's Huffman codes
def test_png_single_bit_flips_with_fixed_crcs_fail(photo, fraction, level, png_check):
    """Pillow stops inflating at the last row, so it can miss the zlib Adler-32 at the end: we do not."""
    data = encoded(photo, "PNG", compress_level=level)
    corrupt = fix_crcs(xor(data, idat_position(data, fraction), b"\x04"))
    with pytest.raises(ImageError, match="corrupt"):
        render(corrupt, FULL, Operations(), LIMITS)


def test_png_whose_image_data_holds_fewer_rows_than_its_header_fails(photo, png_check):
    """A well-formed zlib stream with half the rows: Pillow alone returns it with a black lower half."""
    rows = b"".join(b"\x00" + photo.crop((0, y, 640, y + 1)).tobytes() for y in range(240))
    data = png_from_rows(640, 480, rows)
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # Pillow's own behaviour, pinned: no error
        assert image.crop((0, 300, 640, 480)).getbbox() is None  # ... and black below the rows it had
    with pytest.raises(ImageError, match="truncated"):
        render(data, FULL, Operations(), LIMITS)


@pytest.mark.parametrize(("cut", "fails"), [("in-idat", True), ("before-iend", False), ("garbage-after", False)])
def test_png_cut_short_fails_only_when_rows_are_missing(photo, cut, fails, png_check):
    """A file cut inside its image data is truncated; one that lost only IEND, or has bytes after it, still
    holds every row (Pillow reads both), so it is not refused for that."""
    data = encoded(photo, "PNG")
    data = {"in-idat": data[:idat_position(data, 0.7)], "before-iend": data[:-12],
            "garbage-after": data + b"trailer" * 10}[cut]
    if fails:
        with pytest.raises(ImageError, match="truncated"):
            render(data, FULL, Operations(), LIMITS)
    else:
        assert ImageChops.difference(pixels(data), photo).getbbox() is None


def test_png_decode_error_is_not_swallowed_by_the_exif_probe(photo, png_check):
    """Valid CRCs and zlib stream, one row with an unknown filter type: only Pillow's decoder sees it.

    Pillow's getexif() on a PNG decodes the pixels (to reach an eXIf chunk after them); the pipeline used to
    call it first and swallow its error, and the next load() returned the partial picture as a success."""
    rows = bytearray(b"".join(b"\x00" + photo.crop((0, y, 640, y + 1)).tobytes() for y in range(480)))
    rows[300 * (1 + 640 * 3)] = 7  # row 300's filter type: 0-4 exist
    data = png_from_rows(640, 480, bytes(rows))
    with Image.open(io.BytesIO(data)) as image, pytest.raises(OSError):
        image.getexif()  # Pillow's behaviour the pipeline must not rely on: an EXIF probe decodes
    with pytest.raises(ImageError, match="corrupt"):
        render(data, FULL, Operations(), LIMITS)


def test_png_exif_after_the_image_data_still_rotates(photo, png_check):
    """The orientation of a PNG is read after decoding, so an eXIf chunk after IDAT still counts."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise
    rows = b"".join(b"\x00" + photo.crop((0, y, 640, y + 1)).tobytes() for y in range(480))
    data = png_from_rows(640, 480, rows, png_chunk(b"eXIf", exif.tobytes()))
    (variant,) = render(data, [Target("t", 100, format="png")], Operations(), LIMITS)
    assert (variant.width, variant.height) == (100, 133)  # upright 480x640; unrotated it would be 100x75


def interlaced_png(image: Image.Image) -> bytes:
    """An Adam7-interlaced 8-bit RGB PNG (Pillow writes none): every pass's rows, filter type 0."""
    rows = bytearray()
    for x0, y0, dx, dy in pipeline._ADAM7:
        for y in range(y0, image.height, dy):
            line = b"".join(bytes(image.getpixel((x, y))) for x in range(x0, image.width, dx))
            if line:
                rows += b"\x00" + line
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", image.width, image.height, 8, 2, 0, 0, 1))
    return b"\x89PNG\r\n\x1a\n" + header + png_chunk(b"IDAT", zlib.compress(bytes(rows))) + png_chunk(b"IEND", b"")


def split_idat(data: bytes, pieces: int) -> bytes:
    """The same PNG with its image data spread over `pieces` IDAT chunks."""
    chunks = png_chunks(data)
    stream = b"".join(data[position + 8:position + 8 + length] for kind, position, length in chunks if kind == b"IDAT")
    step = -(-len(stream) // pieces)
    out, written = bytearray(data[:8]), False
    for kind, position, length in chunks:
        if kind != b"IDAT":
            out += data[position:position + 12 + length]
        elif not written:
            out += b"".join(png_chunk(b"IDAT", stream[i:i + step]) for i in range(0, len(stream), step))
            written = True
    return bytes(out)


def png_kinds(photo: Image.Image) -> dict[str, bytes]:
    small = photo.resize((97, 61))
    exif = Image.Exif()
    exif[0x0112] = 6
    with_exif = encoded(small, "PNG")
    iend = with_exif.rindex(b"IEND") - 4
    return {
        "rgb": encoded(small, "PNG"),
        "rgba": encoded(small.convert("RGBA"), "PNG"),
        "la": encoded(small.convert("LA"), "PNG"),
        "palette-trns": encoded(small.convert("P"), "PNG", transparency=3),
        "grey-16bit": encoded(small.convert("I;16"), "PNG"),
        "bilevel": encoded(small.convert("1"), "PNG"),
        "interlaced": interlaced_png(small),
        "eight-idat-chunks": split_idat(encoded(small, "PNG", compress_level=1), 8),
        "exif-after-idat": with_exif[:iend] + png_chunk(b"eXIf", exif.tobytes()) + with_exif[iend:],
    }


@pytest.mark.parametrize("kind", ["rgb", "rgba", "la", "palette-trns", "grey-16bit", "bilevel", "interlaced",
                                  "eight-idat-chunks", "exif-after-idat"])
def test_png_inflated_once_decodes_as_pillow_decodes_the_file(photo, kind):
    """The checked PNG Pillow decodes (image data inflated by the check and stored) holds the same pixels and
    metadata as the original, whatever the PNG's layout; and over _STORED_PNG_MAX the original is decoded."""
    data = png_kinds(photo)[kind]
    checked = _check_png(data)
    assert checked != data, "the image data stored, uncompressed"
    with Image.open(io.BytesIO(data)) as original, Image.open(io.BytesIO(checked)) as stored:
        original.load()
        stored.load()
        assert (stored.mode, stored.size) == (original.mode, original.size)
        assert stored.tobytes() == original.tobytes()
        assert stored.info == original.info
        assert stored.getexif() == original.getexif()
    assert render(checked, FULL, Operations(), LIMITS) == render(data, FULL, Operations(), LIMITS)
    limit = pipeline._STORED_PNG_MAX
    try:
        pipeline._STORED_PNG_MAX = 0
        assert _check_png(data) is data
    finally:
        pipeline._STORED_PNG_MAX = limit


# ---- JPEG ---------------------------------------------------------------------------------------------------


def jpeg_scans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the entropy-coded data after every SOS marker."""
    scans, position = [], 2
    while position < len(data) - 1:
        marker = data[position + 1]
        if marker == 0xD9:
            break
        (length,) = struct.unpack_from(">H", data, position + 2)
        position += 2 + length
        if marker == 0xDA:
            end = position
            while data[end] != 0xFF or data[end + 1] == 0x00 or 0xD0 <= data[end + 1] <= 0xD7:
                end += 1
            scans.append((position, end))
            position = end
    return scans


def jpeg(photo: Image.Image, kind: str) -> tuple[bytes, tuple[int, int]]:
    """The photo as a baseline or progressive JPEG, and the scan to corrupt (a middle one if progressive)."""
    data = encoded(photo, "JPEG", quality=90, progressive=kind == "progressive")
    scans = jpeg_scans(data)
    assert len(scans) == (1 if kind == "baseline" else 10)
    return data, scans[len(scans) // 2] if kind == "progressive" else scans[0]


@pytest.mark.parametrize("targets", [FULL, SMALL], ids=["full", "draft"])
@pytest.mark.parametrize("marker", [b"\xff\xc4\x00\x05\x00\xff", b"\xff\xc0\x00\x11\x08\x01\xe0\x02\x80\x03"],
                         ids=["bogus-DHT", "second-SOF"])
@pytest.mark.parametrize("kind", ["baseline", "progressive"])
def test_jpeg_scan_corruption_that_libjpeg_reports_as_an_error_fails(photo, kind, marker, targets):
    """Bytes inside the scan that read as a marker opening a bad or second header: libjpeg errors out."""
    data, (start, end) = jpeg(photo, kind)
    corrupt = overwrite(data, (start + end) // 2, marker)
    with pytest.raises(ImageError, match="corrupt"):
        render(corrupt, targets, Operations(), LIMITS)


@pytest.mark.parametrize("damage", ["bit-flip", "zeroed-run", "early-EOI", "stray-RST"])
@pytest.mark.parametrize("kind", ["baseline", "progressive"])
def test_jpeg_scan_corruption_decodes_silently_pillow_drops_libjpeg_warnings(photo, kind, damage):
    """Pinned, not wanted: libjpeg only *warns* about bad Huffman codes or a scan ending early, and Pillow
    discards its warnings (JpegDecode.c: no-op output_message, num_warnings check commented out); a flipped
    coefficient bit is valid JPEG anyway. No error reaches Python, so such a file renders "successfully"."""
    data, (start, end) = jpeg(photo, kind)
    if kind == "progressive":
        start, end = jpeg_scans(data)[0]  # the first (DC) scan: its damage shows in every block below
    middle = (start + end) // 2
    corrupt = {
        "bit-flip": lambda: xor(data, middle, b"\x10"),
        "zeroed-run": lambda: overwrite(data, middle, bytes(64)),
        "early-EOI": lambda: overwrite(data, middle, b"\xff\xd9"),
        "stray-RST": lambda: overwrite(data, middle, b"\xff\xd3"),
    }[damage]()
    assert_silently_different(data, corrupt)


# ---- WebP ---------------------------------------------------------------------------------------------------


def webp(photo: Image.Image, lossless: bool) -> tuple[bytes, int, int]:
    """A simple-format WebP, the offset of its VP8/VP8L payload and the payload's length."""
    data = encoded(photo, "WEBP", lossless=lossless, quality=80)
    assert data[12:16] == (b"VP8L" if lossless else b"VP8 ")
    return data, 20, struct.unpack_from("<I", data, 16)[0]


def test_webp_lossy_frame_header_corruption_fails(photo):
    """The VP8 frame tag (first payload bytes) holds the first partition's size: a wrong one is an error."""
    data, payload, _ = webp(photo, lossless=False)
    corrupt = overwrite(data, payload + 1, b"\x00")
    with pytest.raises(ImageError, match="corrupt"):
        render(corrupt, FULL, Operations(), LIMITS)


def test_webp_lossless_prefix_code_corruption_fails(photo):
    """The VP8L transforms and prefix codes come first in the payload: garbage there is an error."""
    data, payload, _ = webp(photo, lossless=True)
    corrupt = overwrite(data, payload + 5, bytes(32))
    with pytest.raises(ImageError, match="corrupt"):
        render(corrupt, FULL, Operations(), LIMITS)


@pytest.mark.parametrize("lossless", [False, True], ids=["VP8", "VP8L"])
def test_webp_payload_corruption_decodes_silently_no_checksum(photo, lossless):
    """Pinned, not wanted: VP8's arithmetic-coded partitions and VP8L's prefix codes accept any bits, and
    WebP has no checksum: libwebp decodes corrupted data further into the payload to wrong pixels."""
    data, payload, length = webp(photo, lossless)
    assert_silently_different(data, xor(data, payload + length * 3 // 4, b"\x5a" * 16))


# ---- GIF ----------------------------------------------------------------------------------------------------


def gif_sub_blocks(data: bytes) -> list[tuple[int, int]]:
    """(offset, length) of the data of every LZW sub-block of the first image."""
    position = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    while data[position] == 0x21:  # extensions
        position += 2
        while data[position]:
            position += data[position] + 1
        position += 1
    assert data[position] == 0x2C
    flags = data[position + 9]
    position += 10 + (3 << ((flags & 7) + 1) if flags & 0x80 else 0) + 1  # descriptor, palette, code size
    blocks = []
    while data[position]:
        blocks.append((position + 1, data[position]))
        position += data[position] + 1
    return blocks


def test_gif_lzw_garbage_fails(photo):
    data = encoded(photo, "GIF")
    blocks = gif_sub_blocks(data)
    start, length = blocks[len(blocks) // 2]
    corrupt = overwrite(data, start, b"\xff" * length)  # codes beyond the table: the decoder stops
    with pytest.raises(ImageError, match="corrupt"):
        render(corrupt, FULL, Operations(), LIMITS)


def test_gif_lzw_bit_flip_decodes_silently_no_checksum(photo):
    """Pinned, not wanted: a flipped bit that keeps every LZW code valid gives wrong pixels, no error."""
    data = encoded(photo, "GIF")
    blocks = gif_sub_blocks(data)
    start, length = blocks[len(blocks) // 2]
    assert_silently_different(data, xor(data, start + length // 2, b"\x01"))


# ---- TIFF ---------------------------------------------------------------------------------------------------


def tiff(photo: Image.Image, compression: str) -> tuple[bytes, int, int]:
    """The photo as a compressed TIFF, and the offset and length of a middle strip."""
    data = encoded(photo, "TIFF", compression=compression)
    with Image.open(io.BytesIO(data)) as image:
        offsets, counts = image.tag_v2[273], image.tag_v2[279]
    assert len(offsets) > 2
    return data, offsets[len(offsets) // 2], counts[len(counts) // 2]


@pytest.mark.parametrize("damage", [b"\x01", b"\x5a" * 16, bytes(1)])
def test_tiff_deflate_strip_corruption_fails(photo, damage):
    """libtiff stops inflating a strip when it has its rows (missing the Adler-32 after them): we do not."""
    data, start, length = tiff(photo, "tiff_adobe_deflate")
    corrupt = xor(data, start + length // 2, damage) if any(damage) else overwrite(data, start + length // 2,
                                                                                    bytes(256))
    with pytest.raises(ImageError, match="corrupt"):
        render(corrupt, FULL, Operations(), LIMITS)


def test_tiff_lzw_garbage_fails(photo):
    data, start, length = tiff(photo, "tiff_lzw")
    with pytest.raises(ImageError, match="corrupt"):
        render(overwrite(data, start + length // 2, b"\xff" * 64), FULL, Operations(), LIMITS)


def test_tiff_lzw_bit_flip_decodes_silently_no_checksum(photo):
    """Pinned, not wanted: LZW has no checksum; a flip that keeps the codes valid changes pixels silently."""
    data, start, length = tiff(photo, "tiff_lzw")
    assert_silently_different(data, xor(data, start + length // 2, b"\x10"))


# ---- an image that makes Pillow raise something unexpected ----------------------------------------------------


def crafted_avif(photo: Image.Image) -> bytes:
    """An AVIF whose primary item (`pitm`) names an item that does not exist."""
    data = encoded(photo.resize((64, 48)), "AVIF")
    position = data.index(b"pitm")
    return data[:position + 8] + struct.pack(">H", 7) + data[position + 10:]  # version/flags, then item_ID


def test_a_crafted_avif_makes_pillow_raise_an_unexpected_exception(photo):
    """Pillow's AVIF plugin raises RuntimeError: not one of the errors by which Pillow reports bad data, so
    the pipeline lets it through and the callers' safety net (worker, `local`) records it."""
    with pytest.raises(RuntimeError, match="Missing or empty image item"):
        render(crafted_avif(photo), FULL, Operations(), LIMITS)


def test_local_run_records_an_unexpected_error_and_carries_on(photo, tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "a_crafted.avif").write_bytes(crafted_avif(photo))
    shutil.copy(CORPUS / "photos" / "DSCN0010.jpg", inputs / "b_photo.jpg")
    corrupt = encoded(photo, "PNG")
    (inputs / "c_corrupt.png").write_bytes(fix_crcs(xor(corrupt, idat_position(corrupt, 0.5), b"\x5a" * 16)))
    (inputs / "d_16bit.tif").write_bytes(encoded(Image.new("I;16B", (40, 30), 1000), "TIFF"))  # once a crash
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump({"spec": {"targets": [{"name": "t", "width": 32.0, "format": "png"}]}}))
    result = subprocess.run([sys.executable, "-m", "kresize_resizer", "local", "--spec", str(spec), "--input",
                             str(inputs), "--output", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    records = {r["source"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    crafted = records["a_crafted.avif"]
    assert crafted["status"] == "failed" and crafted["outputs"] == []
    assert "RuntimeError" in crafted["error"] and "Missing or empty image item" in crafted["error"]
    assert records["c_corrupt.png"]["status"] == "failed" and "corrupt" in records["c_corrupt.png"]["error"]
    for name in ("b_photo.jpg", "d_16bit.tif"):
        assert records[name]["status"] == "succeeded", records[name]
        assert records[name]["outputs"][0]["width"] == 32
