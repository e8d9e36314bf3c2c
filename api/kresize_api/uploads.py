"""Pure upload logic: what an uploaded file is (judged by its content), and the spec a form asks for."""

from __future__ import annotations

import hashlib
import io
import json
import math
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, BinaryIO

from kresize_common.config import ImageLimits
from kresize_common.formats import ACCEPTED_NAMES, INPUTS
from kresize_common.spec import SpecError, normalize_spec
from PIL import Image, UnidentifiedImageError


@dataclass(frozen=True)
class Inspected:
    """One uploaded file. `error` is set when it is rejected; the others when it is accepted."""

    filename: str
    size: int
    sha256: str
    error: str | None = None
    reason: str = ""  # why it was rejected, as a metric label: empty, unrecognised, unreadable, pixels, format
    extension: str = ""
    content_type: str = ""
    width: int = 0
    height: int = 0


def display_name(raw: str | None) -> str:
    """A filename fit for showing back: the last path component, printable, at most 255 characters.
    It is never used as a path or an object key."""
    name = PurePosixPath((raw or "").replace("\\", "/")).name
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C")
    return name[:255] or "unnamed"


def inspect_upload(filename: str | None, data: bytes | BinaryIO, limits: ImageLimits) -> Inspected:
    """Identify an upload by its bytes (never its name or Content-Type) and check the limits
    that can be checked from the header alone. Decoding problems are left to the resizer.

    `data` may be a (spooled) file: it is hashed in chunks and only its header is parsed, so an upload is
    never held in memory whole."""
    name = display_name(filename)
    file = io.BytesIO(data) if isinstance(data, bytes) else data
    file.seek(0)
    hasher, size = hashlib.sha256(), 0
    for chunk in iter(lambda: file.read(1 << 20), b""):
        hasher.update(chunk)
        size += len(chunk)
    digest = hasher.hexdigest()
    if not size:
        return Inspected(name, 0, digest, error="empty file", reason="empty")
    file.seek(0)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(file) as image:
                fmt, (width, height) = image.format, image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        if isinstance(error, UnidentifiedImageError):
            return Inspected(name, size, digest, error="not a supported image (unrecognised content)",
                             reason="unrecognised")
        return Inspected(name, size, digest, error=f"not a readable image: {error}", reason="unreadable")
    except Image.DecompressionBombError as error:
        return Inspected(name, size, digest, error=f"too many pixels: {error}", reason="pixels")
    if fmt not in INPUTS:
        return Inspected(name, size, digest, error=f"unsupported image format {fmt}; send {ACCEPTED_NAMES}",
                         reason="format")
    allowed = INPUTS[fmt].max_pixels(limits.max_pixels)
    if width * height > allowed:
        share = f"1/{INPUTS[fmt].pixel_share} of " if INPUTS[fmt].pixel_share > 1 else ""
        return Inspected(name, size, digest, reason="pixels", error=(
            f"too many pixels: {width}x{height} = {width * height} > limit {allowed} ({share}KRESIZE_MAX_PIXELS "
            f"for {fmt})"))
    return Inspected(name, size, digest, extension=INPUTS[fmt].extension, content_type=INPUTS[fmt].content_type,
                     width=width, height=height)


_TARGET_FIELDS = ("name", "width", "height", "fit", "format", "quality", "upscale", "background")
_INT_FIELDS = {"width", "height", "quality", "parallelism"}
_BOOL_FIELDS = {"upscale", "grayscale"}
_FLOAT_FIELDS = {"blur", "sharpen"}


def _coerce(field: str, raw: str) -> Any:
    try:
        if field in _INT_FIELDS:
            return int(raw)
        if field in _FLOAT_FIELDS:
            value = float(raw)
            if not math.isfinite(value):
                raise ValueError
            return value
    except ValueError:
        raise SpecError([f"{field}: {raw!r} is not a number (or not finite)"]) from None
    if field in _BOOL_FIELDS:
        if raw.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
            raise SpecError([f"{field}: {raw!r} is not true or false"])
        return raw.lower() in ("true", "1", "yes", "on")
    return raw


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_targets(raw: str) -> Any:
    """JSON without NaN/Infinity (Python's json accepts them, nothing else does) and without deep nesting."""
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except RecursionError:
        raise SpecError(["targets: nested too deeply (a list of flat target objects is expected)"]) from None
    except ValueError as error:  # JSONDecodeError included
        raise SpecError([f"targets: not valid JSON: {error}"]) from None


def spec_from_form(form: dict[str, str], limits: ImageLimits | None = None) -> dict[str, Any]:
    """The resize parameters of a request: either `targets` (a JSON list of targets, as in the CRD),
    or the fields of one target (`width`, `height`, `fit`, `format`, `quality`, `upscale`, `background`,
    `name`, default `default`). Plus `grayscale`, `blur`, `sharpen` and `parallelism`.
    Returns the spec without its source/output, validated against the CRD schema; raises SpecError."""
    spec: dict[str, Any] = {}
    if form.get("targets"):
        if any(form.get(f) for f in _TARGET_FIELDS):
            raise SpecError(["give either targets (JSON) or the fields of a single target, not both"])
        spec["targets"] = _parse_targets(form["targets"])
    else:
        target = {f: _coerce(f, form[f]) for f in _TARGET_FIELDS if form.get(f)}
        if "width" not in target and "height" not in target:
            raise SpecError(["give width and/or height (or targets as a JSON list)"])
        target.setdefault("name", "default")
        spec["targets"] = [target]
    operations = {f: _coerce(f, form[f]) for f in ("grayscale", "blur", "sharpen") if form.get(f)}
    if operations:
        spec["operations"] = operations
    if form.get("parallelism"):
        spec["parallelism"] = _coerce("parallelism", form["parallelism"])
    checked = normalize_spec({**spec, "source": {"prefix": "x/"}})
    checked.pop("source")
    errors = (limits or ImageLimits()).output_errors(checked["targets"])
    if errors:
        raise SpecError(errors)
    return checked
