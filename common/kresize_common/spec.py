"""The ResizeJob spec: defaults and validation from the CRD schema, and typed views for the pipeline.

The CRD (manifests/crds/) is the single source of truth; `crd/` here is a generated copy shipped with the
package so every component validates exactly what the apiserver validates.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
import yaml

GROUP = "kresize.dev"
VERSION = "v1alpha1"
PLURAL = "resizejobs"
KIND = "ResizeJob"
API_VERSION = f"{GROUP}/{VERSION}"
TENANT_LABEL = f"{GROUP}/tenant"  # set by the API on the ResizeJobs it creates: whose job it is


class SpecError(ValueError):
    """An invalid ResizeJob spec; `errors` holds one readable message per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("; ".join(errors))
        self.errors = errors


@cache
def crd() -> dict[str, Any]:
    text = resources.files("kresize_common").joinpath("crd/resizejobs.kresize.dev.yaml").read_text()
    return yaml.safe_load(text)


def object_schema() -> dict[str, Any]:
    (version,) = [v for v in crd()["spec"]["versions"] if v["name"] == VERSION]
    return version["schema"]["openAPIV3Schema"]


def spec_schema() -> dict[str, Any]:
    return object_schema()["properties"]["spec"]


def immutable_spec_fields() -> tuple[str, ...]:
    """The spec fields the CRD makes immutable (their CEL rule `self == oldSelf`)."""
    return tuple(name for name, node in spec_schema()["properties"].items()
                 if any(rule.get("rule") == "self == oldSelf" for rule in node.get("x-kubernetes-validations", [])))


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Structural defaulting as the apiserver does it: fill absent properties that declare a default."""
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                value[name] = apply_defaults(sub, value[name])
    elif isinstance(value, list) and "items" in schema:
        return [apply_defaults(schema["items"], item) for item in value]
    return value


_END_ANCHOR = re.compile(r"(?<!\\)\$")


def _json_schema(schema: Any) -> Any:
    """Drop the `x-kubernetes-*` extensions; what remains is plain JSON Schema. Patterns get Python's `\\Z`
    for `$`: the apiserver's `$` is the end of the text, Python's also matches before a final newline."""
    if isinstance(schema, dict):
        return {k: _END_ANCHOR.sub(r"\\Z", v) if k == "pattern" and isinstance(v, str) else _json_schema(v)
                for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if isinstance(schema, list):
        return [_json_schema(v) for v in schema]
    return schema


def _path(prefix: str, parts: Any) -> str:
    out = prefix
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _list_key_errors(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Uniqueness rules of `x-kubernetes-list-type` (map and set), which JSON Schema lacks."""
    errors: list[str] = []
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                errors += _list_key_errors(sub, value[name], f"{path}.{name}")
    elif isinstance(value, list):
        list_type = schema.get("x-kubernetes-list-type")
        seen: set[Any] = set()
        for index, item in enumerate(value):
            key: Any = None
            if list_type == "map" and isinstance(item, dict):
                key = tuple(item.get(k) for k in schema.get("x-kubernetes-list-map-keys", []))
            elif list_type == "set":
                key = repr(item)
            if key is not None:
                if key in seen:
                    shown = key[0] if isinstance(key, tuple) and len(key) == 1 else key
                    errors.append(f"{path}[{index}]: Duplicate value: {shown!r}")
                seen.add(key)
            errors += _list_key_errors(schema.get("items", {}), item, f"{path}[{index}]")
    return errors


def validate(schema: dict[str, Any], value: Any, path: str) -> list[str]:
    """Readable errors for `value` against a CRD schema node (after defaults), or []."""
    validator = jsonschema.Draft7Validator(_json_schema(schema))
    errors = []
    for error in sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path)):
        where = _path(path, error.absolute_path)
        errors.append(f"{where}: {_message(error)}")
    return errors + _list_key_errors(schema, value, path)


def _message(error: jsonschema.ValidationError) -> str:
    expected: Any = error.validator_value  # the schema keyword's value (jsonschema types it loosely)
    if error.validator == "anyOf":
        needed = [" or ".join(s.get("required", [])) for s in expected]
        return f"needs at least one of: {', '.join(needed)}"
    if error.validator == "pattern" and "\\x00-" in expected:  # the object-key pattern
        return (f"{error.instance!r} is not a safe object key: no leading slash, empty segment, segment "
                "starting with '.', control character, backslash or percent sign")
    if error.validator == "pattern":
        return f"{error.instance!r} is not allowed (must match {expected})"
    if error.validator == "enum":
        return f"{error.instance!r} is not one of {', '.join(map(str, expected))}"
    if error.validator == "minimum":
        return f"must be at least {error.validator_value}, got {error.instance}"
    if error.validator == "maximum":
        return f"must be at most {error.validator_value}, got {error.instance}"
    return error.message


def normalize_spec(spec: Any) -> dict[str, Any]:
    """Defaults applied and validated, exactly as the apiserver would store it; raises SpecError."""
    if not isinstance(spec, dict):
        raise SpecError(["spec: must be an object"])
    schema = spec_schema()
    value = apply_defaults(schema, copy.deepcopy(spec))
    errors = validate(schema, value, "spec")
    if errors:
        raise SpecError(errors)
    return value


# Typed views used by the image pipeline. Their defaults are the CRD's, read from it: never restated here.

_HEX = re.compile(r"^#([0-9a-fA-F]{2})([0-9a-fA-F]{2})([0-9a-fA-F]{2})$")


def _schema_at(*path: str) -> dict[str, Any]:
    node = spec_schema()
    for part in path:
        node = node["items"] if part == "[]" else node["properties"][part]
    return node


_TARGET_SCHEMA = _schema_at("targets", "[]")
_OPERATIONS_SCHEMA = _schema_at("operations")
TARGET_DEFAULTS: dict[str, Any] = apply_defaults(_TARGET_SCHEMA, {})
OPERATION_DEFAULTS: dict[str, Any] = apply_defaults(_OPERATIONS_SCHEMA, {})


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    match = _HEX.match(hex_colour)
    if match is None:
        raise SpecError([f"background: {hex_colour!r} is not #rrggbb"])
    red, green, blue = (int(g, 16) for g in match.groups())
    return red, green, blue


@dataclass(frozen=True)
class Target:
    name: str
    width: int | None = None
    height: int | None = None
    fit: str = TARGET_DEFAULTS["fit"]
    format: str = TARGET_DEFAULTS["format"]
    quality: int = TARGET_DEFAULTS["quality"]
    upscale: bool = TARGET_DEFAULTS["upscale"]
    background: tuple[int, int, int] = _rgb(TARGET_DEFAULTS["background"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Target:
        """The pipeline's view of one (validated) target. An integral float (`width: 10.0`: JSON writers may
        emit it, and `type: integer` accepts it) becomes an int; a non-integral, NaN or infinite size or
        quality, or a size below 1, raises SpecError: such values never reach Pillow."""
        raw = apply_defaults(_TARGET_SCHEMA, dict(raw))
        where = f"target {raw.get('name')!r}"

        def whole(name: str) -> int | None:
            value = raw.get(name)
            if value is None:
                return None
            if isinstance(value, float) and value.is_integer():  # False for NaN and the infinities
                value = int(value)
            if isinstance(value, bool) or not isinstance(value, int):
                raise SpecError([f"{where}.{name}: must be an integer, got {value!r}"])
            return value

        width, height = whole("width"), whole("height")
        if width is None and height is None:
            raise SpecError([f"{where}: needs a width or a height"])
        for name, size in (("width", width), ("height", height)):
            if size is not None and size < 1:
                raise SpecError([f"{where}.{name}: must be at least 1, got {size}"])
        return cls(
            name=raw["name"],
            width=width,
            height=height,
            fit=raw["fit"],
            format=raw["format"],
            quality=whole("quality"),  # type: ignore[arg-type]  # defaulted: never None
            upscale=raw["upscale"],
            background=_rgb(raw["background"]),
        )


@dataclass(frozen=True)
class Operations:
    grayscale: bool = OPERATION_DEFAULTS["grayscale"]
    blur: float = float(OPERATION_DEFAULTS["blur"])
    sharpen: float = float(OPERATION_DEFAULTS["sharpen"])

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Operations:
        """The pipeline's view of the operations; a radius that is not a finite number >= 0 (NaN, infinity)
        raises SpecError: it never reaches Pillow."""
        raw = apply_defaults(_OPERATIONS_SCHEMA, dict(raw or {}))

        def radius(name: str) -> float:
            value = raw[name]
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise SpecError([f"operations.{name}: must be a finite number >= 0, got {value!r}"])
            return float(value)

        return cls(
            grayscale=bool(raw["grayscale"]),
            blur=radius("blur"),
            sharpen=radius("sharpen"),
        )
