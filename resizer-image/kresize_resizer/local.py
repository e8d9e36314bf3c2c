"""`kresize-resizer local`: the cluster pipeline on a folder, no cluster and no S3."""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path
from typing import Any

import yaml
from kresize_common.config import ImageLimits
from kresize_common.records import ImageResult, Variant, results_to_json
from kresize_common.spec import Operations, Target, normalize_spec

from .cores import pipelined, render_workers
from .pipeline import ImageError, render_each

log = logging.getLogger("kresize.resizer")


def load_spec(path: Path) -> dict[str, Any]:
    """Targets and operations of a ResizeJob manifest (YAML or JSON), defaulted and validated.
    Raises OSError, yaml.YAMLError or SpecError."""
    document = yaml.safe_load(path.read_text())
    spec = dict((document or {}).get("spec") or {}) if isinstance(document, dict) else {}
    spec.setdefault("source", {"prefix": "local/"})  # not used locally
    spec = normalize_spec(spec)
    # What the schema lets through but the pipeline cannot use (a NaN blur from YAML's .nan): a usage error.
    for target in spec["targets"]:
        Target.from_dict(target)
    Operations.from_dict(spec.get("operations"))
    return spec


def safe_stem(name: str) -> str | None:
    """A file's stem as one path component, or None when it cannot be one."""
    stem = Path(name).stem
    if not stem or stem in (".", "..") or "/" in stem or "\\" in stem or "\x00" in stem:
        return None
    return stem


def input_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files directly in `folder`; symlinks only when they stay inside it."""
    root = folder.resolve()
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.is_symlink() and root not in path.resolve().parents:
            log.warning("skipping %s: a link outside the input folder", path.name)
            continue
        files.append(path)
    return files


def run_local(spec: dict[str, Any], input_dir: Path, output_dir: Path, limits: ImageLimits, workers: int = 0,
              ) -> list[ImageResult]:
    """Every image of a folder through the cluster's workers (cores.pipelined, `workers` at once, 0: one per
    CPU); records in the folder's order. Two inputs with the same stem: the first in that order owns it."""
    targets = [Target.from_dict(t) for t in spec["targets"]]
    operations = Operations.from_dict(spec.get("operations"))
    names = [target.name for target in targets]
    output_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, ImageResult] = {}
    lock = threading.Lock()
    files = input_files(input_dir)
    # The output folder of each input it owns: decided before any image is made, so it does not depend on which
    # finishes first.
    owners: dict[str, Path] = {}
    for path in files:
        stem = safe_stem(path.name)
        if stem is None:
            made[path.name] = ImageResult.failed(path.name, "file name cannot be used as an output folder")
        elif stem in owners:  # a.jpg and a.png would write the same outputs: the first one wins
            made[path.name] = ImageResult.failed(path.name, f"another input already produced outputs for {stem!r}")
        else:
            owners[stem] = path

    def finished(result: ImageResult) -> None:
        with lock:
            made[result.source] = result

    def read(owned: tuple[str, Path]) -> bytes | OSError:
        path = owned[1]
        try:
            with path.open("rb") as file:
                return file.read(limits.max_bytes + 1)  # enough to tell a file over the limit, never more
        except OSError as error:
            return error

    def render(owned: tuple[str, Path], data: bytes | OSError) -> None:
        stem, path = owned  # the stem safe_stem checked names the output folder
        if isinstance(data, OSError):
            finished(ImageResult.failed(path.name, f"cannot read the file: {data.strerror or data}"))
            return
        outputs: list[Variant] = []
        failure: str | None = None
        variants = render_each(data, targets, operations, limits)
        del data  # the pipeline drops the encoded input once decoded
        while True:
            try:
                variant = next(variants, None)
            except ImageError as error:
                failure = str(error)
                break
            except Exception as error:  # one odd image never stops the run
                failure = f"unexpected error while resizing: {type(error).__name__}: {error}"
                log.warning("failed %s: %s", path.name, failure, exc_info=True)
                break
            if variant is None:
                break
            (output_dir / stem).mkdir(exist_ok=True)
            relative = f"{stem}/{variant.target}.{variant.extension}"
            (output_dir / relative).write_bytes(variant.data)  # an OSError here is the folder's, not the image's
            outputs.append(Variant(variant.target, relative, variant.width, variant.height, variant.format,
                                   len(variant.data)))
            del variant  # before the next variant is made
        outputs.sort(key=lambda output: names.index(output.target))  # made smallest first
        finished(ImageResult(path.name, "failed", failure, tuple(outputs)) if failure
                 else ImageResult.succeeded(path.name, outputs))
        if failure:
            log.info("failed %s: %s", path.name, failure)
        else:
            log.info("resized %s into %d variants", path.name, len(outputs))

    pipelined(list(owners.items()), read, render, workers or render_workers())
    records = [made[path.name] for path in files]
    (output_dir / "results.json").write_text(json.dumps(results_to_json(records), indent=2) + "\n")
    return records
