"""The image pipeline: bytes in, encoded variants out. Pure functions, no I/O.

Order: limits (bytes, then pixels from the header, before any decoding) -> JPEG draft to the largest size
any target needs -> decode -> EXIF auto-rotation -> ICC profile to sRGB -> mode normalisation (CMYK,
palette, 16-bit, alpha) -> per target: resize to the fit -> operations -> alpha handling -> encode without
metadata.

Decisions: truncated or corrupt files fail (Pillow's LOAD_TRUNCATED_IMAGES stays off: a half-grey photo is
silent data corruption); animated images use their first frame; `format: original` keeps JPEG, PNG, WebP and
AVIF and writes anything else as PNG.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kresize_common.config import ImageLimits
from kresize_common.formats import INPUTS
from kresize_common.layout import FORMAT_EXTENSIONS
from kresize_common.spec import Operations, Target
from PIL import Image, ImageCms, ImageFilter, ImageOps, UnidentifiedImageError

# Our own limits are checked first and explicitly; Pillow's bomb check stays on as a backstop.
Image.MAX_IMAGE_PIXELS = None

ROTATED_ORIENTATIONS = frozenset({5, 6, 7, 8})
_SRGB = ImageCms.createProfile("sRGB")


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
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise ImageError(f"image is corrupt: {error}") from None
    if image.format not in INPUTS:
        raise ImageError(f"unsupported image format {image.format}")
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(f"too many pixels: {width}x{height} = {width * height} > limit {limits.max_pixels} "
                         "(KRESIZE_MAX_PIXELS)")
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block must not fail the image; treat as upright
        return 1


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert using the embedded ICC profile; CMYK without a profile uses Pillow's conversion."""
    profile = image.info.get("icc_profile")
    if profile and image.mode in ("RGB", "RGBA", "CMYK", "L", "LA"):
        try:
            source = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            if image.mode == "CMYK":
                return ImageCms.profileToProfile(image, source, _SRGB, outputMode="RGB")
            if image.mode in ("RGB", "RGBA"):
                return ImageCms.profileToProfile(image, source, _SRGB, outputMode=image.mode)
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass  # a broken profile: keep the pixels as they are rather than failing the image
    return image


def _normalise_mode(image: Image.Image) -> Image.Image:
    """RGB, RGBA, L or LA only."""
    if image.mode in ("RGB", "RGBA", "L", "LA"):
        return image
    if image.mode == "P" or "transparency" in image.info:
        return image.convert("RGBA")
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return image.point(lambda v: v / 257).convert("L") if image.mode != "I" else image.convert("L")
    if image.mode == "1":
        return image.convert("L")
    if image.mode == "PA":
        return image.convert("RGBA")
    return image.convert("RGB")  # CMYK without profile, YCbCr, LAB, F, ...


def decode(data: bytes, targets: Sequence[Target], limits: ImageLimits) -> tuple[Image.Image, str]:
    """Decode once, as small as the largest target allows, upright and in sRGB; also the source format."""
    image = _open(data, limits)
    source_format = image.format or ""
    stored_w, stored_h = image.size
    rotated = _orientation(image) in ROTATED_ORIENTATIONS
    upright_w, upright_h = (stored_h, stored_w) if rotated else (stored_w, stored_h)
    if image.format in ("JPEG", "MPO") and targets:
        need = [_needed_source_size(upright_w, upright_h, t) for t in targets]
        need_w, need_h = max(n[0] for n in need), max(n[1] for n in need)
        if rotated:
            need_w, need_h = need_h, need_w
        if need_w < stored_w and need_h < stored_h:
            image.draft(image.mode if image.mode in ("RGB", "L", "CMYK") else "RGB", (need_w, need_h))
    try:
        image.seek(0)
        image.load()
        image = ImageOps.exif_transpose(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as error:
        message = str(error)
        if "truncated" in message.lower() or isinstance(error, EOFError):
            raise ImageError(f"image is truncated: {message}") from None
        raise ImageError(f"image is corrupt: {message}") from None
    except MemoryError:
        raise ImageError("image needs more memory than this pod has") from None
    image = _normalise_mode(_to_srgb(image))
    # exif_transpose may leave info behind; nothing of the source's metadata goes out.
    image.info = {}
    return image, source_format


def _resize(image: Image.Image, target: Target) -> Image.Image:
    src_w, src_h = image.size
    out_w, out_h = output_size(src_w, src_h, target)
    if not (target.width and target.height) or target.fit in ("inside", "fill"):
        return image.resize((out_w, out_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
    if target.fit == "cover":
        return ImageOps.fit(image, (out_w, out_h), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
    # contain: scale like inside (never enlarging without upscale), then pad to the exact box
    scale = min(out_w / src_w, out_h / src_h)
    if not target.upscale:
        scale = min(scale, 1.0)
    inner = image.resize(_scaled(src_w, src_h, scale), Image.Resampling.LANCZOS, reducing_gap=3.0)
    mode = "RGBA" if "A" in inner.mode else inner.mode
    fill: Any = (*target.background, 0) if mode == "RGBA" else target.background
    if mode == "L":
        fill = round(sum(target.background) / 3)
    canvas = Image.new(mode, (out_w, out_h), fill)
    canvas.paste(inner, ((out_w - inner.width) // 2, (out_h - inner.height) // 2))
    return canvas


def _apply_operations(image: Image.Image, operations: Operations) -> Image.Image:
    if operations.grayscale and image.mode not in ("L", "LA"):
        image = image.convert("LA" if "A" in image.mode else "L")
    if operations.blur > 0:
        image = image.filter(ImageFilter.GaussianBlur(operations.blur))
    if operations.sharpen > 0:
        image = image.filter(ImageFilter.UnsharpMask(radius=operations.sharpen, percent=100, threshold=2))
    return image


def _output_format(source_format: str, target: Target) -> str:
    if target.format == "original":
        return INPUTS[source_format].original_output
    return target.format


def _encode(image: Image.Image, fmt: str, target: Target) -> bytes:
    has_alpha = "A" in image.mode
    if fmt == "jpeg":
        if has_alpha:  # JPEG has no alpha: flatten on the background colour
            rgba = image.convert("RGBA")
            flat = Image.new("RGB", image.size, target.background)
            flat.paste(rgba, mask=rgba.getchannel("A"))
            image = flat if image.mode == "RGBA" else flat.convert("L")
        elif image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
    elif fmt in ("webp", "avif") and image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGBA" if has_alpha else "RGB")
    out = io.BytesIO()
    if fmt == "jpeg":
        image.save(out, "JPEG", quality=target.quality, optimize=True, progressive=True)
    elif fmt == "png":
        image.save(out, "PNG", compress_level=6)
    elif fmt == "webp":
        image.save(out, "WEBP", quality=target.quality, method=4)
    else:
        image.save(out, "AVIF", quality=target.quality, speed=8)
    return out.getvalue()


def render(data: bytes, targets: Sequence[Target], operations: Operations, limits: ImageLimits) -> list[Rendered]:
    """Every target of one image, or ImageError with a readable reason."""
    image, source_format = decode(data, targets, limits)
    results = []
    for target in targets:
        try:
            variant = _apply_operations(_resize(image, target), operations)
            fmt = _output_format(source_format, target)
            encoded = _encode(variant, fmt, target)
        except MemoryError:
            raise ImageError("image needs more memory than this pod has") from None
        except (OSError, ValueError) as error:
            raise ImageError(f"could not produce {target.name}: {error}") from None
        results.append(Rendered(target.name, encoded, variant.width, variant.height, fmt))
    return results


def make_record(source: str, outputs: list[dict] | None, error: str | None) -> dict:
    """One per-image result record (the same fields locally and in the cluster)."""
    return {
        "source": source,
        "status": "failed" if error else "succeeded",
        "error": error,
        "outputs": outputs or [],
    }
