"""The files of a job, a page at a time, with their state: waiting -> active -> succeeded | failed.

Where a file's state comes from (blocking S3 reads, cached by how long each answer stays true):
- the order: the work plan's shards (image i is in shard i // shardSize), then the files refused at upload
  (spec.source.rejected); a shard manifest never changes once written, so it is read once;
- a finished shard's results file never changes either: read once;
- a running shard's checkpoints (records written as images finish) and its heartbeat (written by the pod while it
  works): re-read at most once a second, and only the batches not read before;
- an image of a shard whose pod is alive is `active` when it is the first one of the shard not finished (a pod
  renders its images in manifest order).
Download links are presigned for the page being returned only, and each is reused for half its lifetime, so
a page read again costs no signing.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kresize_common import layout
from kresize_common.ranges import expand_ranges
from kresize_common.records import (
    ImageResult,
    ShardManifest,
    UploadRecord,
    heartbeat_is_fresh,
    results_from_json,
)
from kresize_common.s3 import get_json, get_json_or_none
from minio import Minio

from .errors import ApiError

STATES = ("waiting", "active", "succeeded", "failed")
TERMINAL = frozenset({"Succeeded", "PartiallyFailed", "Failed"})
RUNNING_SHARD_SECONDS = 1.0  # how long a running shard's checkpoints are trusted before being read again


class _Lru(OrderedDict[Any, Any]):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def put(self, key: Any, value: Any) -> Any:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.size:
            self.popitem(last=False)
        return value

    def hit(self, key: Any) -> Any:
        value = self.get(key)
        if value is not None:
            self.move_to_end(key)
        return value


@dataclass
class _Running:
    """What is known of a shard that has no results file yet."""

    read_at: float = -RUNNING_SHARD_SECONDS
    batches: set[str] = field(default_factory=set)
    records: dict[str, ImageResult] = field(default_factory=dict)
    alive: bool = False
    first_open: int | None = None  # the position of the shard's first image not finished
    results_checked_at: float = -RUNNING_SHARD_SECONDS  # when its results file was last found missing
    reading: threading.Lock = field(default_factory=threading.Lock)


def encode_cursor(index: int) -> str:
    return base64.urlsafe_b64encode(f"i{index}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if text.startswith("i") and text[1:].isdigit():
            return int(text[1:])
    except (binascii.Error, UnicodeDecodeError, ValueError):
        pass
    raise ApiError(422, "invalid cursor: pass the `next` value of the previous page as it is")


class FileReader:
    def __init__(self, s3: Minio, public_s3: Minio, bucket: str, namespace: str, presign_seconds: int,
                 clock: Callable[[], float] = time.time) -> None:
        self.s3, self.public_s3, self.bucket, self.namespace = s3, public_s3, bucket, namespace
        self.presign_seconds, self.clock = presign_seconds, clock
        self._lock = threading.Lock()
        self._manifests = _Lru(512)  # (work, index) -> ShardManifest
        self._results = _Lru(512)  # (work, index) -> {source: ImageResult}, of finished shards
        self._running: _Lru = _Lru(512)  # (work, index) -> _Running
        self._uploads = _Lru(256)  # (name, uid) -> {source: filename}
        self._links = _Lru(20_000)  # (bucket, path) -> (url, good until)
        self._pages = _Lru(256)  # (uid, resourceVersion, cursor, limit, state) -> (built at, JSON)

    # -- the page ------------------------------------------------------------------------------------
    def page_json(self, job: dict[str, Any], cursor: str | None, limit: int, state: str | None) -> bytes:
        """The page as the JSON the API sends. The same page asked again within a second (twenty clients
        polling one job) is the same bytes: it is built once. A change of the job (its resourceVersion) is a
        new page at once."""
        meta = job["metadata"]
        key = (meta.get("uid"), meta.get("resourceVersion"), cursor, limit, state)
        now = time.monotonic()
        with self._lock:
            held = self._pages.hit(key)
        if held is not None and now - held[0] < RUNNING_SHARD_SECONDS:
            return bytes(held[1])
        items, next_cursor, total = self.page(job, cursor, limit, state)
        body = json.dumps({"items": items, "next": next_cursor, "total": total}, separators=(",", ":")).encode()
        with self._lock:
            self._pages.put(key, (now, body))
        return body

    def page(self, job: dict[str, Any], cursor: str | None, limit: int, state: str | None,
             ) -> tuple[list[dict[str, Any]], str | None, int]:
        """Files from `cursor` on, up to `limit` of them in `state` (any state when None): (items, next, total)."""
        plan = _Plan.of(job)
        start = decode_cursor(cursor)
        if state == "active":  # at most one a shard: found shard by shard, not file by file
            active = [i for i in self._active(job, plan) if i >= start][:limit]
            return [self._item(job, i, plan) for i in active], None, plan.total
        index, items = start, list[dict[str, Any]]()
        while index < plan.total and len(items) < limit:
            item = self._item(job, index, plan)
            if state is None or item["state"] == state:
                items.append(item)
            index += 1
        return items, encode_cursor(index) if index < plan.total else None, plan.total

    def finished(self, job: dict[str, Any], known: set[int]) -> list[dict[str, Any]]:
        """Files that reached succeeded or failed and are not in `known` (the live feed's new `file` events)."""
        plan, found = _Plan.of(job), []
        if plan.shard_size:
            for shard_start in range(0, plan.planned, plan.shard_size):
                for index in range(shard_start, min(plan.planned, shard_start + plan.shard_size)):
                    if index in known:
                        continue
                    item = self._item(job, index, plan)
                    if item["state"] not in ("succeeded", "failed"):
                        break  # a pod finishes a shard's images in order: the rest of it is not done either
                    found.append(item)
        found += [self._item(job, i, plan) for i in range(plan.planned, plan.total) if i not in known]
        return found

    def _active(self, job: dict[str, Any], plan: _Plan) -> list[int]:
        """The file each live pod works on: the first unfinished image of each running shard."""
        status = job.get("status") or {}
        if status.get("phase") != "Running" or not plan.shard_size:
            return []
        work = _work(self.namespace, job)
        found = []
        for shard in range(-(-plan.planned // plan.shard_size)):
            if shard in plan.counted or self._finished(work, shard) is not None:
                continue
            running = self._running_shard(work, shard)
            if running.alive:
                manifest = self._manifest(work, shard)
                position = self._first_open(running, manifest)
                if position < len(manifest.images):
                    found.append(shard * plan.shard_size + position)
        return found

    def _item(self, job: dict[str, Any], index: int, plan: _Plan) -> dict[str, Any]:
        if index >= plan.planned:
            entry = plan.rejected[index - plan.planned]
            return _item(index, entry.get("filename"), None, "failed", f"refused at upload: {entry.get('reason')}")
        if not plan.shard_size:  # not planned yet (or never: an invalid job): the keys the API gave, in order
            source = plan.prefix + plan.keys[index]
            terminal = (job.get("status") or {}).get("phase") in TERMINAL
            return _item(index, self._filenames(job).get(source), source, "failed" if terminal else "waiting",
                         "not processed" if terminal else None)
        return self._image_item(job, index, plan.shard_size, plan.counted)

    def _image_item(self, job: dict[str, Any], index: int, shard_size: int, counted: set[int]) -> dict[str, Any]:
        status = job.get("status") or {}
        work = _work(self.namespace, job)
        shard, position = divmod(index, shard_size)
        manifest = self._manifest(work, shard)
        if position >= len(manifest.images):  # the plan and the manifest disagree: never guess
            return _item(index, None, None, "waiting", None)
        source = manifest.images[position].key
        filename = self._filenames(job).get(source)
        terminal = status.get("phase") in TERMINAL
        records = self._finished(work, shard, settled=terminal)
        if records is None and shard in counted:
            records = self._finished(work, shard, settled=True)  # counted a moment ago: its results may be new
            if records is None:
                return _item(index, filename, source, "failed",
                             f"shard {shard} failed after its retries; see the logs of Job {status.get('jobName')}")
        if records is None:
            running = self._running_shard(work, shard, settled=terminal)
            record = running.records.get(source)
            if record is None:
                if terminal:
                    return _item(index, filename, source, "failed", "not processed")
                first_open = self._first_open(running, manifest)
                alive = running.alive and status.get("phase") == "Running"
                return _item(index, filename, source, "active" if alive and first_open == position else "waiting",
                             None)
        else:
            record = records.get(source)
            if record is None:
                return _item(index, filename, source, "failed", f"shard {shard} finished without this image")
        return self._result_item(index, filename, record, job)

    @staticmethod
    def _first_open(running: _Running, manifest: ShardManifest) -> int:
        """The position of the shard's first unfinished image: computed once per read of the shard."""
        if running.first_open is None:
            running.first_open = next((i for i, image in enumerate(manifest.images)
                                       if image.key not in running.records), len(manifest.images))
        return running.first_open

    def _result_item(self, index: int, filename: str | None, record: ImageResult,
                     job: dict[str, Any]) -> dict[str, Any]:
        output_bucket = ((job.get("status") or {}).get("results") or {}).get("outputBucket") or self.bucket
        outputs = [{**variant.to_json(), "url": self._link(output_bucket, variant.path)}
                   for variant in record.outputs]
        item = _item(index, filename, record.source, record.status, record.error, outputs)
        item["reused"] = record.reused
        return item

    # -- reads, cached -------------------------------------------------------------------------------
    def _manifest(self, work: str, shard: int) -> ShardManifest:
        with self._lock:
            found = self._manifests.hit((work, shard))
        if found is None:
            found = ShardManifest.from_json(get_json(self.s3, self.bucket, layout.shard_key(work, shard)))
            with self._lock:
                self._manifests.put((work, shard), found)
        return found

    def _finished(self, work: str, shard: int, *, settled: bool = False) -> dict[str, ImageResult] | None:
        """The shard's results, or None while it runs. `settled`: the job is finished, so any results exist
        now: look again rather than trust a look of a moment ago."""
        with self._lock:
            found = self._results.hit((work, shard))
            running = self._running.hit((work, shard))
        if found is not None:
            return found
        if not settled and running is not None \
                and time.monotonic() - running.results_checked_at < RUNNING_SHARD_SECONDS:
            return None  # looked a moment ago: still running
        raw = get_json_or_none(self.s3, self.bucket, layout.results_key(work, shard))
        if raw is None:
            with self._lock:
                running = self._running.hit((work, shard)) or self._running.put((work, shard), _Running())
                running.results_checked_at = time.monotonic()
            return None
        records = {r.source: r for r in results_from_json(raw)}
        with self._lock:
            self._results.put((work, shard), records)
            self._running.pop((work, shard), None)
        return records

    def _running_shard(self, work: str, shard: int, *, settled: bool = False) -> _Running:
        """What a shard without results has checkpointed, read at most once a second (`settled`, the job is
        finished: read now, since what is missing now is missing for good)."""
        with self._lock:
            running = self._running.hit((work, shard)) or self._running.put((work, shard), _Running())
        asked = time.monotonic()
        fresh_for = 0.0 if settled else RUNNING_SHARD_SECONDS
        if asked - running.read_at < fresh_for:
            return running
        with running.reading:  # one caller reads; the others wait for what it reads, then share it
            if running.read_at > asked or time.monotonic() - running.read_at < fresh_for:
                return running
            self._read_running(work, shard, running)
        return running

    def _read_running(self, work: str, shard: int, running: _Running) -> None:
        now = time.monotonic()
        prefix = layout.checkpoints_prefix(work, shard)
        names = sorted(o.object_name for o in self.s3.list_objects(self.bucket, prefix=prefix) if o.object_name)
        fresh = {}
        for name in names:
            if name not in running.batches:
                fresh[name] = results_from_json(get_json(self.s3, self.bucket, name))
        alive = heartbeat_is_fresh(get_json_or_none(self.s3, self.bucket, layout.heartbeat_key(work, shard)),
                                   self.clock())
        with self._lock:
            for name, batch in fresh.items():
                running.batches.add(name)
                running.records.update((r.source, r) for r in batch)
            running.alive, running.read_at, running.first_open = alive, now, None

    def _filenames(self, job: dict[str, Any]) -> dict[str, str]:
        """Source key -> the name it was uploaded under (the first, when the same content came twice)."""
        meta = job["metadata"]
        key = (meta["name"], meta["uid"])
        with self._lock:
            found = self._uploads.hit(key)
        if found is None:
            raw = get_json_or_none(self.s3, self.bucket, layout.upload_record_key(self.namespace, meta["name"]))
            found = {}
            for entry in (UploadRecord.from_json(raw).files if raw else ()):
                if entry.source and entry.source not in found:
                    found[entry.source] = entry.filename
            with self._lock:
                self._uploads.put(key, found)
        return found

    def _link(self, bucket: str, path: str) -> str:
        now = self.clock()
        with self._lock:
            held = self._links.hit((bucket, path))
        if held is not None and held[1] > now:
            return str(held[0])
        url = self.public_s3.presigned_get_object(bucket, path,
                                                  expires=datetime.timedelta(seconds=self.presign_seconds))
        with self._lock:
            self._links.put((bucket, path), (url, now + self.presign_seconds / 2))
        return url


@dataclass(frozen=True)
class _Plan:
    """How a job's files are numbered: its images in the plan's order (image i in shard i // shardSize), then
    the files refused at upload. An upload job's images are its keys, known from its creation, so an index
    never moves once the job is planned."""

    planned: int
    rejected: list[dict[str, Any]]
    shard_size: int
    counted: set[int]
    keys: list[str]
    prefix: str

    @property
    def total(self) -> int:
        return self.planned + len(self.rejected)

    @classmethod
    def of(cls, job: dict[str, Any]) -> _Plan:
        status, source = job.get("status") or {}, (job.get("spec") or {}).get("source") or {}
        rejected, keys = list(source.get("rejected") or []), list(source.get("keys") or [])
        shard_size = int(status.get("shardSize") or 0)
        planned = len(keys) if keys else max(0, int(status.get("total") or 0) - len(rejected)) if shard_size else 0
        return cls(planned, rejected, shard_size, expand_ranges(status.get("countedIndexes")), keys,
                   source.get("prefix") or "")


def _work(namespace: str, job: dict[str, Any]) -> str:
    return layout.work_prefix(namespace, job["metadata"]["name"], job["metadata"]["uid"])


def _item(index: int, filename: str | None, source: str | None, state: str, error: str | None,
          outputs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"index": index, "filename": filename or None, "source": source, "state": state, "error": error,
            "reused": False, "outputs": outputs or []}
