"""What a finished example job (manifests/examples/) must have produced from the samples `make up` seeds.

Shared by the platform test (emulated cluster) and the e2e suite (a real one), so both hold the examples to
the same standard: Succeeded, every expected image counted, every variant at its exact size and format.
"""

from __future__ import annotations

import functools
import importlib.util
import io
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from kresize_common import layout
from kresize_common.spec import Target, normalize_spec
from kresize_resizer.pipeline import output_size
from minio import Minio
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "manifests" / "examples"
VALID_EXAMPLES = sorted(p.stem for p in EXAMPLES.glob("*.yaml") if p.stem != "invalid")
FORMATS = {"JPEG": "jpeg", "PNG": "png", "WEBP": "webp", "AVIF": "avif", "MPO": "jpeg"}


@functools.cache
def samples_module() -> ModuleType:
    """hack/samples.py: the sample images `make up` puts in S3 for the examples (`seed()`)."""
    spec = importlib.util.spec_from_file_location("kresize_samples", REPO / "hack" / "samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["kresize_samples"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def oriented_size(data: bytes) -> tuple[int, int]:
    """An image's size as the resizer sees it (EXIF orientation applied)."""
    with Image.open(io.BytesIO(data)) as image:
        w, h = image.size
        return (h, w) if image.getexif().get(0x0112) in (5, 6, 7, 8) else (w, h)


def check_example_outputs(s3: Minio, manifest: dict[str, Any], status: dict[str, Any], samples: list) -> None:
    spec = normalize_spec(manifest["spec"])
    prefix, keys = spec["source"]["prefix"], spec["source"].get("keys")
    expected = [s for s in samples if s.key.startswith(prefix) and (not keys or s.key[len(prefix):] in keys)]
    assert expected, f"the example reads nothing that make up seeds (prefix {prefix!r}, keys {keys})"
    assert status["phase"] == "Succeeded", status
    assert status["succeeded"] == status["total"] >= len(expected), status
    bucket, out_prefix = status["results"]["outputBucket"], status["results"]["outputPrefix"]
    for sample in expected:
        data = sample.data()
        width, height = oriented_size(data)
        with Image.open(io.BytesIO(data)) as source:
            source_format = FORMATS[source.format]
        for raw in spec["targets"]:
            target = Target.from_dict(raw)
            fmt = target.format if target.format != "original" else source_format
            key = layout.output_key(out_prefix, layout.image_id(sample.key, prefix), target.name,
                                    layout.FORMAT_EXTENSIONS[fmt])
            with Image.open(io.BytesIO(s3.get_object(bucket, key).read())) as image:
                assert image.size == output_size(width, height, target), (sample.key, target.name)
                assert FORMATS[image.format] == fmt, (sample.key, target.name)
