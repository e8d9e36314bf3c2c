"""The records that cross a process boundary, each defined once, with its builder and its reader together.

- `ShardManifest` (+ `ImageRef`), at `jobs/<ns>/<job>/<uid>/shards/<i>.json`: built by the operator
  (storage.ensure_plan), read by the resizer (worker).
- `ImageResult` (+ `Variant`), a list at `jobs/.../results/<i>.json` (and `results.json` locally), and in
  batches at `jobs/.../checkpoints/<i>/<n>.json` while a pod works: built by the resizer (worker, local) and,
  for images whose variants were reused from an earlier job (`reused`, in checkpoint batch 0), by the operator
  (reuse.py, storage.ensure_plan); read by the resizer's next attempt (worker.Checkpointer), the operator
  (storage.shard_records) and the API (files.FileReader).
- `CacheEntry` (+ `CachedVariant`), at `cache/<identity>.json` (layout.cache_key; identity and parameter hashes
  from cache.py): the variants made before of one image content, by the hash of their parameters, for reuse by
  a later job: built by the resizer (worker) after an image's variants are all uploaded (merged into what the
  entry held), read by the operator (reuse.reuse_variants), which copies the variants instead of making them.
- The shard heartbeat, at `jobs/.../active/<i>.json`: `{"at": <unix time>}` while a pod works on index i,
  deleted when it stops: built by the resizer (worker.Heartbeat, `heartbeat_json`), read by whoever shows a
  file as being worked on (`heartbeat_is_fresh`).
- `UploadRecord` (+ `UploadedFile`), at `uploads/<ns>/<job>.json`: built by the API (jobs.upload_record), read
  by the API (files.FileReader) and the operator's collector (gc).
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
import math
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
    # Whose result cache the shard's images go into (cache.scoped_identity): a job reuses only what its own tenant
    # (or, for kubectl jobs, its namespace) made, so reuse tells no one what another tenant has processed.
    cache_scope: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index, "sourceBucket": self.source_bucket, "outputBucket": self.output_bucket,
            "outputPrefix": self.output_prefix, "targets": list(self.targets), "operations": self.operations,
            "images": [image.to_json() for image in self.images], "cacheScope": self.cache_scope,
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ShardManifest:
        return cls(
            index=raw["index"], source_bucket=raw["sourceBucket"], output_bucket=raw["outputBucket"],
            output_prefix=raw["outputPrefix"], targets=tuple(raw["targets"]), operations=raw.get("operations") or {},
            images=tuple(ImageRef.from_json(image) for image in raw["images"]), cache_scope=raw.get("cacheScope", ""),
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
    # Its variants were copied from an earlier job's (same content, same target parameters), not made again.
    # Stored only when true, so records written before it existed, and every made image's, read the same.
    reused: bool = False

    @classmethod
    def succeeded(cls, source: str, outputs: list[Variant] | tuple[Variant, ...], seconds: float = 0.0,
                  ) -> ImageResult:
        return cls(source, "succeeded", None, tuple(outputs), seconds)

    @classmethod
    def failed(cls, source: str, error: str, seconds: float = 0.0) -> ImageResult:
        return cls(source, "failed", error or "unknown error", (), seconds)

    def to_json(self) -> dict[str, Any]:
        stored: dict[str, Any] = {
            "source": self.source, "status": self.status, "error": self.error,
            "outputs": [variant.to_json() for variant in self.outputs], "seconds": round(self.seconds, 4)}
        if self.reused:
            stored["reused"] = True
        return stored

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> ImageResult:
        return cls(source=raw["source"], status=raw["status"], error=raw.get("error"),
                   outputs=tuple(Variant.from_json(v) for v in raw.get("outputs") or []),
                   seconds=float(raw.get("seconds") or 0.0), reused=raw.get("reused") is True)


def results_to_json(results: list[ImageResult]) -> list[dict[str, Any]]:
    return [result.to_json() for result in results]


def results_from_json(raw: list[Mapping[str, Any]]) -> list[ImageResult]:
    return [ImageResult.from_json(item) for item in raw]


@dataclass(frozen=True)
class CachedVariant:
    """A variant made before, where it is and what it is: the result cache's entry for one image (by content)
    and one target (by parameters). `etag` is the variant's as its upload returned it: it is copied only if it
    still has that ETag, so a variant overwritten since (same key, other parameters) is never reused."""

    bucket: str
    path: str  # its object key in `bucket`
    width: int
    height: int
    format: str  # jpeg | png | webp | avif
    bytes: int
    etag: str

    def to_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "path": self.path, "width": self.width, "height": self.height,
                "format": self.format, "bytes": self.bytes, "etag": self.etag}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CachedVariant:
        return cls(bucket=raw["bucket"], path=raw["path"], width=raw["width"], height=raw["height"],
                   format=raw["format"], bytes=raw["bytes"], etag=raw["etag"])


@dataclass(frozen=True)
class CacheEntry:
    """One image content's variants made before, by the hash of their target parameters and operations."""

    variants: dict[str, CachedVariant]

    def to_json(self) -> dict[str, Any]:
        return {"variants": {digest: variant.to_json() for digest, variant in self.variants.items()}}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> CacheEntry:
        return cls({digest: CachedVariant.from_json(variant) for digest, variant in raw["variants"].items()})


def heartbeat_json(at: float) -> dict[str, Any]:
    """The shard heartbeat's content: when (unix time) its pod last said it was working."""
    return {"at": at}


def heartbeat_is_fresh(raw: Mapping[str, Any] | None, now: float, max_age: float = 30.0) -> bool:
    """Whether a heartbeat (as read, None when there is none) says its pod is working at `now`. A pod beats at
    least every 5 s, so 30 s of silence means it is gone (killed before it could delete it). A time as far in
    the future counts as fresh (clocks of pod and reader differ a little), a farther one does not."""
    if not raw:
        return False
    at = raw.get("at")
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at):
        return False
    return abs(now - at) <= max_age


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
    # Images rendered at once; 0 or unset: one per CPU of the pod's quota, as far as its memory limit holds
    # worst-case images (kresize_resizer.cores.render_workers).
    RENDER_WORKERS = "KRESIZE_RENDER_WORKERS"
    # The exit code of a pod stopped by SIGTERM (a scale-down, a deletion) after checkpointing its finished
    # images: the Job's pod failure policy ignores it, so it never counts against backoffLimitPerIndex.
    STOPPED_EXIT_CODE = 143
