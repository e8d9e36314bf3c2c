"""The records that cross a process boundary, each defined once, with its builder and its reader together.

- `ShardManifest` (+ `ImageRef`), at `jobs/<ns>/<job>/<uid>/shards/<i>.json`: built by the operator
  (storage.ensure_plan), read by the resizer (worker).
- `ImageResult` (+ `Variant`), a list at `jobs/.../results/<i>.json` (and `results.json` locally), and in
  batches at `jobs/.../checkpoints/<i>/<n>.json` while a pod works: built by the resizer (worker, local), read
  by the resizer's next attempt (worker.Checkpointer), the operator (storage.shard_records) and the API
  (jobs.result_records).
- `UploadRecord` (+ `UploadedFile`), at `uploads/<ns>/<job>.json`: built by the API (jobs.upload_record), read
  by the API (jobs.file_states) and the operator's collector (gc).
- The plan, at `jobs/.../plan.json`: the operator's, for itself after a restart (planning.ShardPlan).
- The results pointer, the ResizeJob's `status.results`: written by the operator, read by the API; typed as
  `resizejob.Results` (generated from the CRD, like the whole spec and status).
- The resizer's environment (`PodEnv`): set by the operator (jobs.build_job), read by the resizer
  (worker.run_from_env).

The S3 keys are built in layout.py, the image formats are in formats.py. `to_json` gives exactly the JSON that
is stored, `from_json` reads it back; renaming a field means changing it here, once, for every program.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageRef:
    key: str  # the source object
    id: str  # its key relative to the source prefix, without extension: where its variants go

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "id": self.id}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ImageRef:
        return cls(key=raw["key"], id=raw["id"])


@dataclass(frozen=True)
class ShardManifest:
    """The work of one Job index: which images, with which targets and operations, written where."""

    index: int
    source_bucket: str
    output_bucket: str
    output_prefix: str
    targets: tuple[dict[str, Any], ...]  # as the apiserver stores them (the CRD's defaults applied)
    operations: dict[str, Any]
    images: tuple[ImageRef, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "sourceBucket": self.source_bucket, "outputBucket": self.output_bucket,
            "outputPrefix": self.output_prefix, "targets": list(self.targets), "operations": self.operations,
            "images": [image.to_json() for image in self.images],
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ShardManifest:
        return cls(
            index=raw["index"], source_bucket=raw["sourceBucket"], output_bucket=raw["outputBucket"],
            output_prefix=raw["outputPrefix"], targets=tuple(raw["targets"]), operations=raw.get("operations") or {},
            images=tuple(ImageRef.from_json(image) for image in raw["images"]),
        )


@dataclass(frozen=True)
class Variant:
    """One written variant of an image."""

    target: str
    path: str  # object key in the cluster, file path relative to the output folder locally
    width: int
    height: int
    format: str  # jpeg | png | webp | avif
    bytes: int

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "path": self.path, "width": self.width, "height": self.height,
                "format": self.format, "bytes": self.bytes}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Variant:
        return cls(target=raw["target"], path=raw["path"], width=raw["width"], height=raw["height"],
                   format=raw["format"], bytes=raw["bytes"])


@dataclass(frozen=True)
class ImageResult:
    """What became of one image: every variant, or why none."""

    source: str
    status: str  # succeeded | failed
    error: str | None = None
    outputs: tuple[Variant, ...] = ()
    seconds: float = 0.0  # time to download, render and upload it (the operator's duration metrics)

    @classmethod
    def succeeded(cls, source: str, outputs: list[Variant] | tuple[Variant, ...], seconds: float = 0.0,
                  ) -> ImageResult:
        return cls(source, "succeeded", None, tuple(outputs), seconds)

    @classmethod
    def failed(cls, source: str, error: str, seconds: float = 0.0) -> ImageResult:
        return cls(source, "failed", error or "unknown error", (), seconds)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "status": self.status, "error": self.error,
                "outputs": [variant.to_json() for variant in self.outputs], "seconds": round(self.seconds, 4)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ImageResult:
        return cls(source=raw["source"], status=raw["status"], error=raw.get("error"),
                   outputs=tuple(Variant.from_json(v) for v in raw.get("outputs") or []),
                   seconds=float(raw.get("seconds") or 0.0))


def results_to_json(results: list[ImageResult]) -> list[dict[str, Any]]:
    return [result.to_json() for result in results]


def results_from_json(raw: list[Mapping[str, Any]]) -> list[ImageResult]:
    return [ImageResult.from_json(item) for item in raw]


@dataclass(frozen=True)
class UploadedFile:
    filename: str  # for showing back only; never a path or a key
    bytes: int
    sha256: str
    error: str | None  # why it was refused at upload, or None
    source: str | None  # its original's object key, when accepted

    def to_json(self) -> dict[str, Any]:
        return {"filename": self.filename, "bytes": self.bytes, "sha256": self.sha256, "error": self.error,
                "source": self.source}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> UploadedFile:
        return cls(filename=raw.get("filename") or "", bytes=raw.get("bytes", 0), sha256=raw.get("sha256", ""),
                   error=raw.get("error"), source=raw.get("source"))


@dataclass(frozen=True)
class UploadRecord:
    """What the API remembers of an upload: each file, as the user named it, and what became of it."""

    files: tuple[UploadedFile, ...]
    created_at: str = field(
        default_factory=lambda: datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    @property
    def sources(self) -> set[str]:
        return {f.source for f in self.files if f.source}

    def to_json(self) -> dict[str, Any]:
        return {"createdAt": self.created_at, "files": [f.to_json() for f in self.files]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> UploadRecord:
        return cls(files=tuple(UploadedFile.from_json(f) for f in raw.get("files") or []),
                   created_at=raw.get("createdAt", ""))


class PodEnv:
    """The environment a resizer pod reads, beyond S3 and the image limits (config.S3Settings, ImageLimits)."""

    WORK_PREFIX = "KRESIZE_WORK_PREFIX"  # jobs/<ns>/<job>/<uid>/: where the shard manifests and results are
    INDEX = "JOB_COMPLETION_INDEX"  # set by the Job controller for Indexed Jobs
    S3_RETRY_SECONDS = "KRESIZE_S3_RETRY_SECONDS"
    # The exit code of a pod stopped by SIGTERM (a scale-down, a deletion) after checkpointing its finished
    # images: the Job's pod failure policy ignores it, so it never counts against backoffLimitPerIndex.
    STOPPED_EXIT_CODE = 143
