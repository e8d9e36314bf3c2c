"""The image pipeline: bytes in, encoded variants out. Pure functions, no I/O.

Order: limits (bytes, then pixels from the header, before any decoding) -> JPEG draft to the largest size any
target needs -> output limits (every target's size from the upright original's size: before decoding when the
orientation is known, again after) -> integrity of the compressed stream (PNG, deflate TIFF) -> decode (once)
-> ICC profile to sRGB (unless it waits, below) -> mode normalisation (CMYK, palette, 16-bit, alpha; RGBA and
LA premultiplied) -> a whole-factor `reduce()` as far as every target allows (`decode`) -> resample once per
target (`plan`, below), turning what is resampled from the source upright (EXIF orientation: the rotation copies
the smaller image) -> per target, one at a time, smallest first: pad (contain) -> operations -> alpha handling ->
encode without metadata -> hand the variant out (`render_each`).

Resample once, cascade down
---------------------------
Output sizes and crop boxes are computed from the upright original (`output_size`, `sampling`), whatever the
decoder shrank, and mapped into the decoded pixels (`Sampling.within`). The decoded source is shrunk before
anything else touches it: JPEG by DCT scaling (`draft`, to the largest size any target needs), every format then
by `reduce()` (a box average over whole k x k blocks) as long as each target keeps a Lanczos step of at least
_REDUCING_GAP (2, libvips' default; `resize(reducing_gap=...)` does the same per call). Each target is one
Lanczos `resize()` of its box (cover: the centred crop, never a crop then a resize) from the smallest image that
holds its region at least _CASCADE_RATIO times as densely: the source or a larger target's resampled image
(`plan`), which is kept until its own turn. An embedded RGB profile whose tone curve is close to sRGB's
(Adobe RGB, Display P3) is converted on the resampled images instead of the source: the colour error is
measured by tests/test_pipeline_quality.py (mean dE76 <= 0.6) along with every variant's PSNR and SSIM against a
straightforward full-size rendering (>= 46 dB, >= 0.996 on the corpus).

Decisions: truncated or corrupt files fail (Pillow's LOAD_TRUNCATED_IMAGES stays off: a half-grey photo is
silent data corruption); animated images use their first frame; `format: original` keeps JPEG, PNG, WebP and
AVIF and writes anything else as PNG.

Decoding errors are never swallowed
-----------------------------------
The pixels are decoded exactly once, by `decode`'s own `load()`, and any error it raises fails the image.
Nothing may decode earlier: Pillow's `PngImageFile.getexif()` calls `load()` when the eXIf chunk was not seen
before the image data, and `ImageFile.load()` keeps what it decoded up to an error, so an EXIF probe that
swallowed the error let a later `load()` return a partly black picture as a success. The EXIF orientation is
therefore read before decoding only for JPEG (its EXIF is an APP1 segment parsed by `open`, and `draft` needs
it), and after decoding for every other format.

What a corruption inside the compressed image data does (measured with Pillow 13.0, libjpeg-turbo 3.2,
libwebp 1.6, libtiff 4.7 on corpus photos; tests/test_corrupt_images.py pins every case):

- PNG: always fails. Pillow itself checks no IDAT CRC (`load_read` skips it) and stops inflating at the last
  row, so it can miss the zlib Adler-32 at the end of the stream, and it accepts a well-formed stream that
  holds fewer rows (the rest stays black). `_check_png` therefore checks the CRC of every chunk and inflates
  the IDAT stream itself: it must end (zlib verifies the Adler-32) and hold every row. Up to 64 MiB of image
  data, Pillow then decodes the rows the check inflated (stored, so its inflate only copies them); beyond, the
  check streams (1 MiB of output at a time) and Pillow inflates again: ~0.4 s more for 50 MP.
- TIFF, deflate: always fails: libtiff, too, stops inflating a strip when it has its rows, so `_check_tiff`
  inflates every strip or tile to its end. TIFF, LZW (and PackBits, uncompressed): only codes libtiff finds
  invalid fail ("Using code not yet in table", "Not enough data"); LZW has no checksum, so a flipped bit that
  keeps the codes valid changes pixels silently (11 of 25 single-bit flips measured; none failed).
- GIF: codes Pillow's LZW decoder finds invalid, or a stream that ends early, fail ("broken data stream",
  "truncated"); GIF has no checksum, so most single-bit flips (22 of 25) and some byte runs decode to wrong
  pixels silently.
- JPEG (baseline and progressive): what makes libjpeg *error* fails: bytes inside the scan data that read as
  a marker opening a bad or second table, frame or scan header (DHT, DQT, SOF, SOS). Everything else decodes
  to wrong pixels silently (every single-bit flip measured, 22 of 25 random 64-byte runs): libjpeg only
  *warns* about bad Huffman codes, a scan ending early (an EOI or RST inside it) or extraneous bytes, and
  Pillow drops its warnings: `JpegDecode.c` installs a no-op `output_message` and has its `num_warnings` check
  commented out, the decoder returns 0, so `ImageFile.ERRORS` (decoder return codes) never sees them, and
  nothing in `JpegImagePlugin` or `Image.core` exposes them (python-pillow/Pillow#9106: no way to turn them
  into errors). And JPEG has no checksum: a flipped coefficient bit is valid data even libjpeg cannot notice.
- WebP (lossy VP8 and lossless VP8L): only a corrupt frame header or partition size (the first bytes of the
  payload) fails ("failed to read next frame"); VP8's arithmetic-coded partitions and VP8L's prefix codes
  accept any bits and WebP has no checksum, so corruption further into the payload decodes to wrong pixels
  silently (200 of 200 measured). AVIF (AV1) has no checksum either.

Memory: worst case per image
----------------------------
Pillow keeps RGB, RGBA and LA pixels in 4 bytes (L in 1). With P_in the decoded pixels (<= KRESIZE_MAX_PIXELS,
half of it for WebP), P_out one variant's pixels (<= KRESIZE_MAX_OUTPUT_PIXELS, a quarter of it for AVIF and for
WebP with transparency) and B the file's bytes (<= KRESIZE_MAX_FILE_BYTES), the resident peak is about

    R + B_next + max(decoding, converting, every variant)
    decoding   = B + d * P_in   d = 4 baseline JPEG, PNG, TIFF, BMP (+ 2 x 64 MiB at most for a PNG whose rows
                                the check inflated, `_STORED_PNG_MAX`); 5 GIF (palette, then RGBA); 7 (4:2:0)
                                to 10 (4:4:4) progressive JPEG (libjpeg keeps every coefficient); 9 AVIF;
                                16 WebP (Pillow's WebPAnimDecoder holds two canvases, then copies the frame)
    converting = 8 * P_in       premultiplying alpha, CMYK, 16-bit: the old and the new copy
    a variant  = 4 * P_in       the source, until the last resize that reads it
               + 4 * Q          larger targets' resampled images kept for smaller ones (Q <= max(P_in / 4, 4 MP))
               + max(4 * P_r + 8 * P_out,   resizing: Pillow's intermediate P_r <= sqrt(P_in * P_out) (it
                                            picks the pass order), the premultiplied result and its copy
                     12 * P_out,            a blur or sharpen: the variant, the result, a transposed copy
                     (5 + e) * P_out + E)   encoding: the flattened copy for JPEG, the encoder (e ~3
                                            optimised JPEG, ~0 PNG, 5 WebP, ~20 WebP with alpha, 19 to 26
                                            AVIF) and the encoded bytes E (PNG: up to ~4 * P_out)

R (interpreter, Pillow, S3 client) is ~70 MiB; B_next is the next image, which the pod downloads meanwhile.
Variants are made and handed out one at a time, smallest first, so the source is freed before the largest one
is sharpened and encoded (a kept image is freed at its own turn, so it never coexists with a larger variant's
operations); the total output pixels (KRESIZE_MAX_TOTAL_OUTPUT_PIXELS) bound time and output bytes
more than the peak. With the defaults the largest term is a 50 MP variant made while the source is still needed,
then sharpened: 4 * 50 + 12 * 50 MP = 800 MB, with R and B_next ~880 MiB, under the 1 GiB a render worker
is given (the chart's pod: 2 GiB for two).
tests/test_resizer_limits.py measures `kresize-resizer local` (no B_next): 789 MiB for a 50 MP rotated RGBA PNG
with an ICC profile into two sharpened 50 MP JPEGs, 608 MiB for it into 12.5 MP AVIF and WebP-with-alpha
variants. Without the format shares a 50 MP WebP input or a 25 MP AVIF variant would take about 1 GiB on its own
(1051 and 1021 MiB measured with the pipeline before these changes).
"""

from __future__ import annotations

import io
import math
import struct
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from isal import isal_zlib
from kresize_common.config import ImageLimits
from kresize_common.formats import INPUTS
from kresize_common.layout import FORMAT_EXTENSIONS
from kresize_common.spec import Operations, Target
from PIL import Image, ImageCms, ImageFile, ImageFilter, UnidentifiedImageError

# Our own limits (KRESIZE_MAX_PIXELS, per format) are checked before decoding, so Pillow's own bomb check is
# switched off: it would only refuse, with a less helpful message, what ours already refuses.
Image.MAX_IMAGE_PIXELS = None

ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SRGB = ImageCms.createProfile("sRGB")
# Whole-factor box reduction before Lanczos leaves at least this much for the Lanczos step (libvips' default gap)
_REDUCING_GAP = 2.0
# A target is resampled from a larger one only when that holds at least this many times its pixels per side
# (1.5x steps, less the rounding of a side).
_CASCADE_RATIO = 1.4
# The targets' images kept to derive smaller ones from: at most 1 / _KEPT_SHARE of the decoded source's pixels,
# or _KEPT_FLOOR pixels (16 MB) when that is more (a drafted JPEG is barely larger than its largest target).
_KEPT_SHARE = 4
_KEPT_FLOOR = 4_000_000
# An embedded RGB profile is converted after resampling when averaging before or after the conversion differs by
# at most this many levels (`_srgb_transform`).
_DEFERRED_AVERAGING_ERROR = 8
# Formats that need several times the memory per pixel of the others get a share of the pixel limits.
# (Inputs: formats.INPUTS[...].pixel_share, shared with the API's upload check.)
# An AVIF variant, or a WebP one with alpha, may have 1/4 of max_output_pixels: libaom needs ~19 bytes per pixel
# (~26 with alpha), libwebp ~20 with alpha (5 without), JPEG and PNG encoders next to nothing.
COSTLY_OUTPUT_SHARE = 4
WEBP_MAX_SIDE = 16383  # the WebP format's limit
_PREMULTIPLIED = {"RGBA": "RGBa", "LA": "La"}
_STRAIGHT = {v: k for k, v in _PREMULTIPLIED.items()}
_INFLATE_CHUNK = 1 << 20  # output bytes per step when checking a deflate stream
# PNG image data up to this many bytes inflated is inflated once, by the check (`_check_png`); decoding it then
# holds it twice more (inflated and stored) besides the image: 2 x 64 MiB at most, a 16 MP RGBA PNG.
_STORED_PNG_MAX = 64 << 20
_INFLATE_ERROR = cast(type[Exception], isal_zlib.error)  # ISA-L's zlib.error (its stub types it as an instance)
# Exceptions by which Pillow reports bad image data; anything else is unexpected and propagates (the worker
# and `kresize-resizer local` turn it into a failed record naming its type).
_DATA_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)


class ImageError(Exception):
    """A bad image. The message is a reason a user can act on."""


@dataclass(frozen=True)
class Rendered:
    target: str
    data: bytes
    width: int
    height: int
    format: str  # jpeg | png | webp | avif

    @property
    def extension(self) -> str:
        return FORMAT_EXTENSIONS[self.format]


def output_size(src_w: int, src_h: int, target: Target) -> tuple[int, int]:
    """Exact output dimensions for an (already auto-rotated) source of src_w x src_h.

    - Only width or only height: scale by it, keeping the aspect ratio (every fit alike).
    - inside: scale = min(w/sw, h/sh); the result fits the box, no padding.
    - contain: the image scaled as for inside, padded (centred) to exactly w x h.
    - cover: scale = max(w/sw, h/sh), centre-cropped to exactly w x h.
    - fill: exactly w x h, the aspect ratio ignored.
    Without `upscale`: inside and one-dimension targets cap the scale at 1; contain does not enlarge the
    image but still pads to the box; cover shrinks the box, keeping its aspect ratio, until it fits in the
    image (k = min(1, sw/w, sh/h), box round(w*k) x round(h*k)), so a 200x200 thumb of a 100x68 image is
    68x68; fill caps each side at the source's. Sides are rounded to the nearest pixel, at least 1.
    """
    w, h = target.width, target.height
    if w is None or h is None:
        scale = (w / src_w) if w is not None else (h / src_h)  # type: ignore[operator]
        if not target.upscale:
            scale = min(scale, 1.0)
        return _scaled(src_w, src_h, scale)
    if target.fit == "fill":
        return (w, h) if target.upscale else (min(w, src_w), min(h, src_h))
    if target.fit == "contain":
        return w, h
    if target.fit == "cover":
        if target.upscale:
            return w, h
        k = min(1.0, src_w / w, src_h / h)
        return max(1, round(w * k)), max(1, round(h * k))
    scale = min(w / src_w, h / src_h)  # inside
    return _scaled(src_w, src_h, scale if target.upscale else min(scale, 1.0))


def _scaled(src_w: int, src_h: int, scale: float) -> tuple[int, int]:
    return max(1, round(src_w * scale)), max(1, round(src_h * scale))


def _needed_source_size(src_w: int, src_h: int, target: Target) -> tuple[int, int]:
    """How large the decoded (upright) source must be so this target loses no quality."""
    out_w, out_h = output_size(src_w, src_h, target)
    if target.fit == "cover" and target.width and target.height:
        scale = max(out_w / src_w, out_h / src_h)
        return math.ceil(src_w * scale), math.ceil(src_h * scale)
    if target.fit == "contain" and target.width and target.height:
        scale = min(out_w / src_w, out_h / src_h, 1.0 if not target.upscale else math.inf)
        return math.ceil(src_w * scale), math.ceil(src_h * scale)
    return out_w, out_h


def _output_format(source_format: str, target: Target) -> str:
    if target.format == "original":
        return INPUTS[source_format].original_output
    return target.format


def output_problem(src_w: int, src_h: int, targets: Sequence[Target], source_format: str, limits: ImageLimits,
                   alpha: bool = False) -> str | None:
    """Why these targets of an upright src_w x src_h source (with transparency: `alpha`) would exceed the
    output limits, or None."""
    total = 0
    for target in targets:
        width, height = output_size(src_w, src_h, target)
        pixels = width * height
        if pixels > limits.max_output_pixels:
            return (f"output too large: target {target.name} would be {width}x{height} = {pixels} pixels, over "
                    f"the limit of {limits.max_output_pixels} per variant (KRESIZE_MAX_OUTPUT_PIXELS)")
        fmt = _output_format(source_format, target)
        costly = fmt == "avif" or (fmt == "webp" and alpha)
        if costly and pixels > limits.max_output_pixels // COSTLY_OUTPUT_SHARE:
            kind = "AVIF" if fmt == "avif" else "WebP with transparency"
            return (f"output too large: {kind} target {target.name} would be {width}x{height} = {pixels} pixels, "
                    f"over {limits.max_output_pixels // COSTLY_OUTPUT_SHARE}: an AVIF variant or a WebP variant "
                    "with transparency may have a quarter of KRESIZE_MAX_OUTPUT_PIXELS (their encoders need about "
                    "20 bytes per pixel)")
        if fmt == "webp" and max(width, height) > WEBP_MAX_SIDE:
            return (f"output too large: WebP target {target.name} would be {width}x{height}; WebP stores at most "
                    f"{WEBP_MAX_SIDE} pixels per side")
        total += pixels
    if total > limits.max_total_output_pixels:
        return (f"output too large: the {len(targets)} targets would be {total} pixels together, over the limit "
                f"of {limits.max_total_output_pixels} per image (KRESIZE_MAX_TOTAL_OUTPUT_PIXELS)")
    return None


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if not data:
        raise ImageError("empty file")
    if len(data) > limits.max_bytes:
        raise ImageError(f"file too large: more than {limits.max_bytes} bytes (KRESIZE_MAX_FILE_BYTES)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (unrecognised data)") from None
    except (*_DATA_ERRORS, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image is corrupt: {error}") from None
    if image.format not in INPUTS:
        raise ImageError(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(f"too many pixels: {width}x{height} = {width * height} > limit {limits.max_pixels} "
                         "(KRESIZE_MAX_PIXELS)")
    allowed = INPUTS[image.format].max_pixels(limits.max_pixels)
    if width * height > allowed:
        raise ImageError(f"too many pixels for a {image.format}: {width}x{height} = {width * height} > {allowed}: "
                         f"a {image.format} image may have 1/{INPUTS[image.format].pixel_share} of "
                         "KRESIZE_MAX_PIXELS (its decoder needs about 16 bytes per pixel)")
    return image


# Adam7 passes: first column, first row, column step, row step.
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_image_bytes(width: int, height: int, depth: int, color: int, interlace: int) -> int:
    """Length of the inflated IDAT stream: every row with its filter byte."""
    bits = _PNG_CHANNELS.get(color, 0) * depth

    def rows(w: int, h: int) -> int:
        return h * (1 + (w * bits + 7) // 8) if w > 0 and h > 0 else 0

    if not interlace:
        return rows(width, height)
    return sum(rows((width - x0 + dx - 1) // dx, (height - y0 + dy - 1) // dy) for x0, y0, dx, dy in _ADAM7)


def _inflate_to_end(inflater: Any, data: memoryview) -> int:
    """Feed `data` to a zlib decompressor, discarding the output (1 MiB at a time); returns its length."""
    produced = 0
    while data and not inflater.eof:
        produced += len(inflater.decompress(data, _INFLATE_CHUNK))
        data = inflater.unconsumed_tail
    return produced


def _stored_png_chunk(kind: bytes, data: bytes) -> list[bytes | memoryview]:
    """A PNG chunk holding `data` as a zlib stream of stored (uncompressed) deflate blocks, as pieces to join."""
    view = memoryview(data)
    body: list[bytes | memoryview] = [b"\x78\x01"]  # deflate, 32 KiB window, no dictionary, fastest
    for start in range(0, len(data), 0xFFFF):
        block = view[start:start + 0xFFFF]
        body += (struct.pack("<BHH", start + 0xFFFF >= len(data), len(block), len(block) ^ 0xFFFF), block)
    body.append(struct.pack(">I", isal_zlib.adler32(data)))
    crc = isal_zlib.crc32(kind)
    for piece in body:
        crc = isal_zlib.crc32(piece, crc)
    return [struct.pack(">I4s", sum(len(piece) for piece in body), kind), *body, struct.pack(">I", crc)]


def _check_png(data: bytes) -> bytes:
    """Every chunk's CRC up to IEND, and an IDAT zlib stream that ends (Adler-32) and holds every row. Trailing
    bytes after IEND and a file cut after the complete image data (Pillow reads both) pass.

    Returns the PNG for Pillow to decode. Image data of up to _STORED_PNG_MAX bytes inflated is inflated here
    once, and Pillow gets the same chunks with it stored (uncompressed deflate blocks, which Pillow's inflate
    only copies), so the file is inflated once instead of twice; Pillow inflates with the system zlib, this with
    ISA-L, 2x as fast (a 2048x1536 RGBA PNG: 220 -> 130 ms to check and decode). Larger image data is inflated
    twice, the check streaming (1 MiB at a time), so the memory it takes stays small."""
    view = memoryview(data)
    kept: list[memoryview] = []  # every whole chunk up to IEND, in order, CRC included
    first_idat: int | None = None  # index in `kept` of the first IDAT chunk
    idat: list[memoryview] = []
    header: tuple[int, ...] | None = None
    position = 8
    while position + 12 <= len(data):  # a file cut after its image data (no IEND) still has every row
        length, kind = struct.unpack_from(">I4s", data, position)
        end = position + 8 + length
        if end + 4 > len(data):
            break  # cut off inside this chunk: fine only if the image data is complete (checked below)
        if isal_zlib.crc32(view[position + 4:end]) != struct.unpack_from(">I", data, end)[0]:
            raise ImageError(f"image is corrupt: PNG chunk {kind.decode('latin-1')!r} at byte {position} fails its "
                             "CRC check")
        if kind == b"IHDR" and length >= 13:
            header = struct.unpack_from(">IIBBBBB", data, position + 8)
        elif kind == b"IDAT":
            idat.append(view[position + 8:end])
            if first_idat is not None:
                position = end + 4
                continue
            first_idat = len(kept)
        kept.append(view[position:end + 4])
        if kind == b"IEND":
            break
        position = end + 4
    if header is None:
        return data  # Pillow refuses a PNG without IHDR at open
    width, height, depth, color, _, _, interlace = header
    expected = _png_image_bytes(width, height, depth, color, interlace)
    try:
        if expected <= _STORED_PNG_MAX and first_idat is not None:
            inflater = isal_zlib.decompressobj()
            rows = inflater.decompress(b"".join(idat), expected + 1)
            if inflater.eof and len(rows) == expected:
                return b"".join((view[:8], *kept[:first_idat], *_stored_png_chunk(b"IDAT", rows),
                                 *kept[first_idat + 1:]))
            del rows  # more than the rows (Pillow ignores the rest) or cut short: streamed below, as any other
        inflater = isal_zlib.decompressobj()
        produced = sum(_inflate_to_end(inflater, chunk) for chunk in idat) + len(inflater.flush())
    except _INFLATE_ERROR as error:
        raise ImageError(f"image is corrupt: PNG image data: {error}") from None
    if not inflater.eof or produced < expected:
        raise ImageError("image is truncated: the PNG image data ends before the last row")
    return data


def _check_tiff(data: bytes, image: Image.Image) -> None:
    """Deflate strips or tiles of the first image must each be a complete zlib stream (Adler-32 checked)."""
    tags = getattr(image, "tag_v2", None)
    if tags is None or tags.get(259) not in (8, 32946):  # Adobe deflate, old deflate
        return
    offsets, counts = tags.get(324) or tags.get(273), tags.get(325) or tags.get(279)
    if not offsets or not counts:
        return  # libtiff reports a TIFF without strips
    view = memoryview(data)
    for index, (offset, count) in enumerate(zip(offsets, counts, strict=False)):
        if not count:
            continue
        if offset + count > len(data):
            raise ImageError(f"image is truncated: TIFF strip {index} runs past the end of the file")
        inflater = isal_zlib.decompressobj()
        try:
            _inflate_to_end(inflater, view[offset:offset + count])
            inflater.flush()
        except _INFLATE_ERROR as error:
            raise ImageError(f"image is corrupt: TIFF strip {index}: {error}") from None
        if not inflater.eof:
            raise ImageError(f"image is corrupt: TIFF strip {index} ends inside its compressed data")


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the image; treat as upright
        return 1


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    return (size[1], size[0]) if orientation in ROTATED_ORIENTATIONS else size


Box = tuple[float, float, float, float]


def _upright_box(box: Box, stored: tuple[int, int], orientation: int) -> Box:
    """`box` in the stored image's coordinates (width x height `stored`) as a box in the upright image's."""
    x0, y0, x1, y1 = box
    w, h = stored
    return {
        2: (w - x1, y0, w - x0, y1),
        3: (w - x1, h - y1, w - x0, h - y0),
        4: (x0, h - y1, x1, h - y0),
        5: (y0, x0, y1, x1),
        6: (h - y1, x0, h - y0, x1),
        7: (h - y1, w - x1, h - y0, w - x0),
        8: (y0, w - x1, y1, w - x0),
    }.get(orientation, box)


def _stored_box(box: Box, upright: tuple[int, int], orientation: int) -> Box:
    """`box` in the upright image's coordinates (width x height `upright`) as a box in the stored image's: the
    inverse of `_upright_box` (orientations 6 and 8 undo each other, the others undo themselves)."""
    return _upright_box(box, upright, {6: 8, 8: 6}.get(orientation, orientation))


@dataclass(frozen=True)
class Sampling:
    """A region of the upright original (`box`, in the original's pixels) held at `size` pixels."""

    box: Box
    size: tuple[int, int]

    @property
    def pixels(self) -> int:
        return self.size[0] * self.size[1]

    def density(self) -> tuple[float, float]:
        """Pixels held per pixel of the original, across and down."""
        x0, y0, x1, y1 = self.box
        return self.size[0] / (x1 - x0), self.size[1] / (y1 - y0)

    def within(self, holder: Sampling) -> Box:
        """This region in the pixel coordinates of an image that holds `holder` (clamped to that image:
        float rounding must not make a box Pillow refuses)."""
        dx, dy = holder.density()
        hx, hy = holder.box[0], holder.box[1]
        w, h = holder.size
        x0, y0, x1, y1 = self.box
        return (min(max((x0 - hx) * dx, 0.0), w), min(max((y0 - hy) * dy, 0.0), h),
                min(max((x1 - hx) * dx, 0.0), w), min(max((y1 - hy) * dy, 0.0), h))


def sampling(src_w: int, src_h: int, target: Target) -> Sampling:
    """What the target takes from an upright src_w x src_h original: the region and the size it is resampled
    to (for `contain`, the image before padding). The sizes are `output_size`'s."""
    out_w, out_h = output_size(src_w, src_h, target)
    whole = (0.0, 0.0, float(src_w), float(src_h))
    if target.width and target.height and target.fit == "cover":
        return Sampling(_cover_box(src_w, src_h, out_w, out_h), (out_w, out_h))
    if target.width and target.height and target.fit == "contain":
        scale = min(out_w / src_w, out_h / src_h)
        return Sampling(whole, _scaled(src_w, src_h, scale if target.upscale else min(scale, 1.0)))
    return Sampling(whole, (out_w, out_h))


def _shrink_factor(source: Sampling, needed: Sequence[Sampling]) -> int:
    """The whole factor by which the source can be reduced (a box average) for every target and still leave
    each a Lanczos step of at least _REDUCING_GAP: what `resize(reducing_gap=...)` does for one target."""
    if not needed:
        return 1
    sx, sy = source.density()
    ratio = min(min(sx / dx, sy / dy) for dx, dy in (s.density() for s in needed))
    return max(1, int(ratio / _REDUCING_GAP))


def _derivable(child: Sampling, holder: Sampling) -> bool:
    """Whether `child` may be resampled from an image holding `holder`: it holds the child's whole region, and
    either exactly as the child wants it or at least _CASCADE_RATIO times as densely (a Lanczos step from
    barely more pixels softens more than it saves; tests/test_pipeline_quality.py measures both)."""
    if child == holder:
        return True
    cx0, cy0, cx1, cy1 = child.box
    hx0, hy0, hx1, hy1 = holder.box
    eps = 1e-6
    if cx0 < hx0 - eps or cy0 < hy0 - eps or cx1 > hx1 + eps or cy1 > hy1 + eps:
        return False
    (cdx, cdy), (hdx, hdy) = child.density(), holder.density()
    return hdx >= _CASCADE_RATIO * cdx and hdy >= _CASCADE_RATIO * cdy


def plan(samplings: Sequence[Sampling], budget: int) -> list[int | None]:
    """For each target, the index of the target whose resampled image it is made from, or None for the source.

    Largest first, each target takes the smallest larger one it is `_derivable` from, as long as the images
    kept for others add up to at most `budget` pixels (they stay in memory until their own turn)."""
    order = sorted(range(len(samplings)), key=lambda i: -samplings[i].pixels)
    parents: list[int | None] = [None] * len(samplings)
    kept: set[int] = set()
    total = 0
    for position, index in enumerate(order):
        best: int | None = None
        for candidate in order[:position]:
            cost = 0 if candidate in kept else samplings[candidate].pixels
            if total + cost <= budget and _derivable(samplings[index], samplings[candidate]) and (
                    best is None or samplings[candidate].pixels < samplings[best].pixels):
                best = candidate
        if best is not None:
            parents[index] = best
            if best not in kept:
                kept.add(best)
                total += samplings[best].pixels
    return parents


def _srgb_transform(image: Image.Image) -> tuple[ImageCms.ImageCmsTransform | None, bool]:
    """A transform from the image's embedded profile to sRGB (None: no profile, or a broken one, whose pixels are
    kept as they are rather than failing the image), and whether it may wait until after resampling.

    Resampling averages pixels; it commutes with the conversion where the conversion is affine. So RGB only
    (alpha would need straight values; CMYK converts non-linearly), and only when averaging two greys before
    converting lands within _DEFERRED_AVERAGING_ERROR levels of averaging after: sRGB, Display P3 and Adobe RGB
    (6 levels, near black) pass, ProPhoto (gamma 1.8: 18) and linear profiles (58) convert first.
    tests/test_pipeline_quality.py measures the colour error of deferring (mean dE76 <= 0.6 on corpus photos)."""
    profile = image.info.get("icc_profile")
    if not profile or image.mode not in ("RGB", "RGBA", "CMYK"):
        return None, False
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
        transform = ImageCms.buildTransform(source, _SRGB, image.mode, "RGB" if image.mode == "CMYK" else image.mode)
        if image.mode != "RGB":
            return transform, False
        ramp = Image.frombytes("L", (256, 1), bytes(range(256)))
        grey = ImageCms.applyTransform(Image.merge("RGB", (ramp, ramp, ramp)), transform)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return None, False
    assert grey is not None
    return transform, _averaging_error(grey.getchannel("G").tobytes()) <= _DEFERRED_AVERAGING_ERROR


def _averaging_error(curve: bytes) -> float:
    """How far a 256-entry tone curve is from affine: the largest difference, over pairs of levels, between the
    curve of their mean and the mean of their curves."""
    levels = range(0, 256, 15)
    return max(abs(curve[(a + b) // 2] - (curve[a] + curve[b]) / 2)
               for a in levels for b in levels if a < b and (a + b) % 2 == 0)


def _convert(image: Image.Image, transform: ImageCms.ImageCmsTransform, in_place: bool) -> Image.Image:
    try:
        in_place = in_place and transform.input_mode == transform.output_mode
        converted = ImageCms.applyTransform(image, transform, inPlace=in_place) or image
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # as for a broken profile: the pixels as they are
    converted.info.pop("icc_profile", None)  # Pillow tags the result sRGB; no metadata goes out
    return converted


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGB, RGBA, L or LA only."""
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if image.mode == "P" or "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode == "I;16":
        return image.point(lambda v: v / 257).convert("L")
    if image.mode.startswith("I;16"):  # big-endian or native 16-bit: Pillow's point() needs I;16 or I
        return image.convert("I").point(lambda v: v / 257).convert("L")
    if image.mode in ("I", "1"):
        return image.convert("L")
    if image.mode == "PA":
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK without profile, YCbCr, LAB, F, ...


@dataclass(frozen=True)
class Decoded:
    """A decoded image, ready to resample: in RGB, L or premultiplied RGBa/La, shrunk as far as every target
    allows (JPEG draft, then a whole-factor reduce), still as stored: what is resampled from it is turned upright
    (`orientation`), so the rotation copies the smaller images."""

    image: Image.Image
    format: str
    size: tuple[int, int]  # the upright original's: every output size and crop box is computed from it
    held: Sampling  # what `image`, turned upright, holds of the original (past its edge when shrunk by a factor)
    transform: ImageCms.ImageCmsTransform | None  # sRGB conversion still to do on what is resampled from it
    orientation: int = 1  # EXIF orientation: `_TRANSPOSE[orientation]` turns `image` upright

    def resample(self, wanted: Sampling) -> Image.Image:
        """`wanted` resampled from the source, upright (a new image unless `wanted` is the source as it is)."""
        box = _stored_box(wanted.within(self.held), self.held.size, self.orientation)  # held.size: upright
        image = _resample(self.image, _upright(wanted.size, self.orientation), box)
        if self.orientation in _TRANSPOSE:
            image = image.transpose(_TRANSPOSE[self.orientation])
        return image


def _holding(image: Image.Image, scale: float, stored: tuple[int, int], orientation: int) -> Sampling:
    """What a decoded image (`scale` original pixels per pixel, as stored: `stored` is the original's size)
    holds of the upright original: a bit past its edge when shrunk by a factor that does not divide it."""
    return Sampling(_upright_box((0.0, 0.0, image.width * scale, image.height * scale), stored, orientation),
                    _upright(image.size, orientation))


def decode(data: bytes, targets: Sequence[Target], limits: ImageLimits) -> Decoded:
    """Decode once, as small as the largest target allows, and (or about to be: `Decoded.transform`) in sRGB.

    Fails (ImageError) on any decoding error, and before decoding or resizing when a target would exceed the
    output limits (`output_problem`)."""
    image = _open(data, limits)
    source_format = image.format or ""
    stored = image.size
    orientation: int | None = None
    scale = 1.0  # original pixels per decoded pixel
    if source_format in ("JPEG", "MPO"):
        orientation = _orientation(image)  # from the APP1 segment parsed by open(): decodes no pixels
        upright_w, upright_h = _upright(stored, orientation)
        if targets:
            need = [_needed_source_size(upright_w, upright_h, t) for t in targets]
            need_w, need_h = _upright((max(n[0] for n in need), max(n[1] for n in need)), orientation)
            if need_w < stored[0] and need_h < stored[1]:
                drafted = image.draft(image.mode if image.mode in ("RGB", "L", "CMYK") else "RGB", (need_w, need_h))
                if drafted:
                    scale = stored[0] / drafted[1][2]
        problem = output_problem(upright_w, upright_h, targets, source_format, limits)
    else:  # orientation unknown until decoded (a PNG may keep eXIf after its pixels): fail early if either fails
        problem = output_problem(*stored, targets, source_format, limits)
        if problem and not output_problem(*_upright(stored, 6), targets, source_format, limits):
            problem = None
    if problem:
        raise ImageError(problem)
    stored_png: io.BytesIO | None = None
    if source_format == "PNG":
        checked = _check_png(data)
        if checked is not data:  # the same PNG with its image data stored: open that one to decode
            stored_png = io.BytesIO(checked)
            del checked
            image = Image.open(stored_png)
    elif source_format == "TIFF":
        _check_tiff(data, image)
    try:
        image.seek(0)
        image.load()  # the only decode: an error here fails the image, whatever was decoded before it
    except _DATA_ERRORS as error:
        message = str(error)
        if "truncated" in message.lower() or isinstance(error, EOFError):
            raise ImageError(f"image is truncated: {message}") from None
        raise ImageError(f"image is corrupt: {message}") from None
    except MemoryError:
        raise ImageError("image needs more memory than this pod has") from None
    finally:
        if stored_png is not None:
            stored_png.close()  # frees the stored copy now, not when the decoded image goes (it keeps the file)
    if orientation is None:
        orientation = _orientation(image)
    mode = image.mode
    alpha = mode in _PREMULTIPLIED or mode == "PA" or (mode not in ("RGB", "L") and "transparency" in image.info)
    size = _upright(stored, orientation)
    problem = output_problem(*size, targets, source_format, limits, alpha)
    if problem:
        raise ImageError(problem)
    try:
        transform, deferred = _srgb_transform(image)
        if transform is not None and not deferred:
            image = _convert(image, transform, in_place=True)
            transform = None
        image = _normalise_mode(image)
        if image.mode in _PREMULTIPLIED:
            # Pillow resizes and reduces RGBA and LA premultiplied, converting the whole input on every call:
            # convert once instead (and before the reduce below, which must average premultiplied values).
            image = image.convert(_PREMULTIPLIED[image.mode])
        factor = _shrink_factor(_holding(image, scale, stored, orientation),
                                [sampling(*size, target) for target in targets])
        if factor > 1:
            image = image.reduce(factor)
            scale *= factor
        held = _holding(image, scale, stored, orientation)
        if isinstance(image, ImageFile.ImageFile) and source_format in ("WEBP", "AVIF"):
            # Still the opened file, whose decoder holds canvases of the whole image: keep only the pixels.
            image = image.copy()
    except (OSError, ValueError) as error:
        raise ImageError(f"cannot convert the pixels ({mode}): {error}") from None
    except MemoryError:
        raise ImageError("image needs more memory than this pod has") from None
    # Nothing of the source's metadata goes out.
    image.info = {}
    return Decoded(image, source_format, size, held, transform, orientation)


def _cover_box(src_w: int, src_h: int, out_w: int, out_h: int) -> Box:
    """The centred crop of the source with the output's aspect ratio (as ImageOps.fit computes it)."""
    ratio = out_w / out_h
    if src_w / src_h == ratio:
        crop_w, crop_h = float(src_w), float(src_h)
    elif src_w / src_h > ratio:
        crop_w, crop_h = ratio * src_h, float(src_h)
    else:
        crop_w, crop_h = float(src_w), src_w / ratio
    left, top = (src_w - crop_w) / 2, (src_h - crop_h) / 2
    return left, top, left + crop_w, top + crop_h


def _resample(image: Image.Image, size: tuple[int, int], box: Box) -> Image.Image:
    """Lanczos resize of `box` to `size`, reducing by whole factors first when shrinking by _REDUCING_GAP or
    more. Pillow (13) resamples in two passes and picks their order by the smaller intermediate: at most
    min(out_w * in_h, in_w * out_h) <= sqrt(P_in * P_out) pixels (tests/test_resizer_limits.py pins it)."""
    if size == image.size and box == (0, 0, *image.size):
        return image  # nothing to do (`_straight` or the caller copies before anything changes it)
    return image.resize(size, Image.Resampling.LANCZOS, box=box, reducing_gap=_REDUCING_GAP)


def _straight(image: Image.Image) -> Image.Image:
    """A resized (premultiplied) variant back to straight alpha; never the source object itself."""
    return image.convert(_STRAIGHT[image.mode]) if image.mode in _STRAIGHT else image


def _pad(inner: Image.Image, target: Target, size: tuple[int, int]) -> Image.Image:
    """`contain`: the straight-alpha inner image centred on the box, padded with the background."""
    if inner.size == size:
        return inner
    mode = "RGBA" if "A" in inner.mode else inner.mode
    fill: Any = (*target.background, 0) if mode == "RGBA" else target.background
    if mode == "L":
        fill = round(sum(target.background) / 3)
    canvas = Image.new(mode, size, fill)
    canvas.paste(inner, ((size[0] - inner.width) // 2, (size[1] - inner.height) // 2))
    return canvas


def _operation_steps(operations: Operations) -> list[Callable[[Image.Image], Image.Image]]:
    """The operations as steps, each making a new image (the caller drops the old one)."""
    steps: list[Callable[[Image.Image], Image.Image]] = []
    if operations.grayscale:
        steps.append(lambda image: image if image.mode in ("L", "LA")
                     else image.convert("LA" if "A" in image.mode else "L"))
    if operations.blur > 0:
        steps.append(lambda image: image.filter(ImageFilter.GaussianBlur(operations.blur)))
    if operations.sharpen > 0:
        steps.append(lambda image: image.filter(
            ImageFilter.UnsharpMask(radius=operations.sharpen, percent=100, threshold=2)))
    return steps


def _flatten(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """RGBA -> RGB and LA -> L on the background colour (for JPEG, which has no alpha)."""
    alpha = image.getchannel("A")
    if image.mode == "LA":
        flat = Image.new("L", image.size, round(sum(background) / 3))
        flat.paste(image.getchannel("L"), mask=alpha)
        return flat
    flat = Image.new("RGB", image.size, background)
    flat.paste(image if image.mode == "RGBA" else image.convert("RGBA"), mask=alpha)
    return flat


def _encoder_mode(image: Image.Image, fmt: str, target: Target) -> Image.Image:
    """The variant in a mode the format stores: alpha flattened on the background for JPEG."""
    has_alpha = "A" in image.mode
    if fmt == "jpeg":
        if has_alpha:
            return _flatten(image, target.background)
        if image.mode not in ("RGB", "L"):
            return image.convert("RGB")
    elif fmt in ("webp", "avif") and image.mode not in ("RGB", "RGBA"):
        return image.convert("RGBA" if has_alpha else "RGB")
    return image


@dataclass(frozen=True)
class Encoding:
    """Encoder settings besides the target's quality. The defaults are measured (docs/design.md, "Encoder
    settings"; bench/bench_encoders.py); the CRD has no per-target field for them yet."""

    jpeg_optimize: bool = True  # Huffman tables for the image: 2% fewer bytes than baseline
    jpeg_progressive: bool = False  # 3.4% fewer bytes again, for 2.4x the encoding CPU
    webp_method: int = 4  # 0 (fast) .. 6 (small)
    avif_speed: int = 8  # 0 (small) .. 10 (fast)
    png_compress_level: int = 6


ENCODING = Encoding()


def _save(image: Image.Image, fmt: str, target: Target, encoding: Encoding) -> bytes:
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, "JPEG", quality=target.quality, optimize=encoding.jpeg_optimize,
                   progressive=encoding.jpeg_progressive)
    elif fmt == "png":
        image.save(out, "PNG", compress_level=encoding.png_compress_level)
    elif fmt == "webp":
        image.save(out, "WEBP", quality=target.quality, method=encoding.webp_method)
    else:
        image.save(out, "AVIF", quality=target.quality, speed=encoding.avif_speed)
    return out.getvalue()


def render_each(data: bytes, targets: Sequence[Target], operations: Operations, limits: ImageLimits,
                encoding: Encoding = ENCODING) -> Iterator[Rendered]:
    """Every target of one image, made and handed out one at a time (drop each before taking the next),
    smallest first.

    Resampled once per target, each from the smallest image that serves it (`plan`): the decoded source, or
    a larger target's resampled image, kept until its own turn (at most a quarter of the source's pixels, or
    4 MP). Those are made first, largest first; the rest in turn, and the source is freed after
    the last resample that reads it, before the largest variant's operations and encoding.

    Raises ImageError with a readable reason for a bad image (before the first variant when it is the input
    or the output limits); other exceptions are unexpected and propagate. Each step rebinds `variant`, so
    only the image a step reads and the one it makes are alive."""
    decoded = decode(data, targets, limits)
    del data  # the caller may drop its reference too: the encoded input is not needed any more
    held, transform, size, source_format = decoded.held, decoded.transform, decoded.size, decoded.format
    source: Decoded | None = decoded  # dropped after the last resample that reads it
    del decoded
    samplings = [sampling(*size, target) for target in targets]
    parents = plan(samplings, max(held.pixels // _KEPT_SHARE, _KEPT_FLOOR))
    uses = [1 + parents.count(index) for index in range(len(targets))]  # its own turn, then its children's
    source_uses = parents.count(None)
    kept: dict[int, Image.Image] = {}

    def resampled(index: int) -> Image.Image:
        """The target's resampled image (premultiplied when the source is), from its parent."""
        nonlocal source, source_uses
        parent = parents[index]
        if parent is None:
            assert source is not None
            image = source.resample(samplings[index])
            source_uses -= 1
            if transform is not None:  # converted after shrinking: fewer pixels, the colour error measured
                image = _convert(image, transform, in_place=image is not source.image)
            if not source_uses:
                source = None
        elif samplings[index] == samplings[parent]:
            image = kept[parent]
        else:
            image = _resample(kept[parent], samplings[index].size, samplings[index].within(samplings[parent]))
        if parent is not None:
            uses[parent] -= 1
            if not uses[parent]:
                del kept[parent]
        return image

    def turn(index: int) -> Image.Image:
        image = kept.pop(index) if index in kept else resampled(index)
        uses[index] -= 1
        if uses[index]:  # its children still need it (only when one shares its very sampling)
            kept[index] = image
        return image

    try:
        for index in sorted(set(p for p in parents if p is not None), key=lambda i: -samplings[i].pixels):
            kept[index] = resampled(index)  # parents first: each before its children, largest first
    except MemoryError:
        raise ImageError("image needs more memory than this pod has") from None
    sizes = [output_size(*size, target) for target in targets]
    order = sorted(range(len(targets)), key=lambda i: sizes[i][0] * sizes[i][1])
    steps = _operation_steps(operations)
    for index in order:
        target = targets[index]
        fmt = _output_format(source_format, target)
        try:
            variant = _pad(_straight(turn(index)), target, sizes[index])
            for step in steps:
                variant = step(variant)
            variant = _encoder_mode(variant, fmt, target)
            width, height = variant.size
            encoded = _save(variant, fmt, target, encoding)
            del variant
        except MemoryError:
            raise ImageError("image needs more memory than this pod has") from None
        except (OSError, ValueError) as error:
            raise ImageError(f"could not produce {target.name}: {error}") from None
        rendered = Rendered(target.name, encoded, width, height, fmt)
        del encoded
        yield rendered
        del rendered


def render(data: bytes, targets: Sequence[Target], operations: Operations, limits: ImageLimits,
           encoding: Encoding = ENCODING) -> list[Rendered]:
    """Every target of one image in the targets' order, or ImageError with a readable reason."""
    names = [target.name for target in targets]
    return sorted(render_each(data, targets, operations, limits, encoding),
                  key=lambda variant: names.index(variant.target))
