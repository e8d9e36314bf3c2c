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
from kresize_common.spec import SpecError, normalize_spec, spec_schema
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
_INT_FIELDS = {"width", "height", "quality", "parallelism", "priority"}
_BOOL_FIELDS = {"upscale", "grayscale", "reuse"}
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


FORM_FIELDS = frozenset({*_TARGET_FIELDS, "targets", "grayscale", "blur", "sharpen", "parallelism", "priority",
                         "reuse", "urls"})
FILE_FIELD = "files"


def unknown_fields(names: set[str]) -> list[str]:
    """Form fields the API does not know: refused, so a misspelled `widht` is not silently ignored."""
    return [f"{name}: unknown field; the fields are {', '.join(sorted(FORM_FIELDS | {FILE_FIELD}))}"
            for name in sorted(names - FORM_FIELDS - {FILE_FIELD})]


def form_schema() -> dict[str, Any]:
    """The multipart body of POST /v1/jobs as OpenAPI, its types, ranges and defaults taken from the CRD's
    schema (the one source of truth), so Swagger's "Try it out" can upload."""
    spec = spec_schema()["properties"]
    target = spec["targets"]["items"]["properties"]
    operations = spec["operations"]["properties"]

    def field(schema: dict[str, Any], description: str | None = None) -> dict[str, Any]:
        keep = {k: v for k, v in schema.items() if k in (
            "type", "minimum", "maximum", "enum", "default", "pattern", "maxLength", "minLength", "description")}
        return {**keep, "description": description or keep.get("description", "")}

    properties: dict[str, Any] = {
        FILE_FIELD: {"type": "array", "items": {"type": "string", "format": "binary"},
                     "description": "The images (repeat the field). JPEG, PNG, WebP, GIF, TIFF, BMP, AVIF."},
        "urls": {"type": "array", "items": {"type": "string", "format": "uri"},
                 "description": "Images to fetch by URL (repeat the field, or one per line)."},
        "targets": {"type": "string", "description": (
            'The variants as a JSON list of targets, as in the ResizeJob\'s spec.targets, e.g. '
            '[{"name": "thumb", "width": 320, "height": 320, "fit": "cover", "format": "webp"}]. '
            "Or give the fields of one target instead.")},
    }
    for name in _TARGET_FIELDS:
        properties[name] = field(target[name], f"One target: {target[name].get('description', name)}")
    for name in ("grayscale", "blur", "sharpen"):
        properties[name] = field(operations[name])
    for name in ("parallelism", "priority", "reuse"):
        properties[name] = field(spec[name])
    return {"content": {"multipart/form-data": {"schema": {
        "type": "object", "properties": properties, "additionalProperties": False}},
        "application/json": {"schema": {
            "type": "object", "required": ["urls"], "additionalProperties": False,
            "properties": {**{k: v for k, v in properties.items() if k != FILE_FIELD},
                           "targets": {"type": "array", "items": {"type": "object"},
                                       "description": "The variants, as in spec.targets."}}}}},
        "required": True}


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
    for name in ("parallelism", "priority", "reuse"):
        if form.get(name):
            spec[name] = _coerce(name, form[name])
    checked = normalize_spec({**spec, "source": {"prefix": "x/"}})
    checked.pop("source")
    errors = (limits or ImageLimits()).output_errors(checked["targets"])
    if errors:
        raise SpecError(errors)
    return checked
