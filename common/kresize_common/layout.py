"""Where everything lives in S3. Every key kresize writes is built here and nowhere else.

    originals/<sha256><ext>                       uploads through the API (content-addressed)
    uploads/<namespace>/<job>.json                the API's record of an upload: filename -> key
    jobs/<namespace>/<job>/<uid>/plan.json        the work plan, written last (its presence = plan complete)
    jobs/<namespace>/<job>/<uid>/shards/<i>.json  the images and settings of Job index i
    jobs/<namespace>/<job>/<uid>/checkpoints/<i>/<n>.json  records of index i's images as they finish (batches)
    jobs/<namespace>/<job>/<uid>/results/<i>.json the per-image result records of index i
    jobs/<namespace>/<job>/<uid>/active/<i>.json  index i's heartbeat, {"at": <unix time>}: present while a pod
                                                  works on it (renewed at least every 5 s), deleted when it stops
    cache/<scope>/<identity>.json                 the result cache: where the variants of one content (identity:
                                                  `sha256-<hex>` or `etag-<etag>`, within a namespace and tenant)
                                                  are, by parameters hash (records.CacheEntry; parts: cache.py)
    <output prefix><image id>/<target>.<ext>      the variants (default prefix results/<namespace>/<job>/)

Keys are object names, never file paths: nothing here touches a filesystem.
"""

from __future__ import annotations

import posixpath

from .formats import OUTPUTS

UPLOADS_SOURCE_PREFIX = "originals/"

FORMAT_EXTENSIONS = {name: f.extension for name, f in OUTPUTS.items()}  # variant extensions by target format


def work_prefix(namespace: str, name: str, uid: str) -> str:
    # The uid keeps a deleted-and-recreated job of the same name from reading stale work.
    return f"jobs/{namespace}/{name}/{uid}/"


def plan_key(work: str) -> str:
    return f"{work}plan.json"


def shard_key(work: str, index: int) -> str:
    return f"{work}shards/{index:05d}.json"


def results_prefix(work: str) -> str:
    return f"{work}results/"


def results_key(work: str, index: int) -> str:
    return f"{results_prefix(work)}{index:05d}.json"


def checkpoints_root(work: str) -> str:
    """Where the checkpoints of every index are."""
    return f"{work}checkpoints/"


def checkpoints_prefix(work: str, index: int) -> str:
    return f"{checkpoints_root(work)}{index:05d}/"


def checkpoint_key(work: str, index: int, batch: int) -> str:
    """A batch of per-image result records of index `index`, written while its pod works; batch 0 may be the
    operator's, with the records of the images it reused (its pods treat them as finished)."""
    return f"{checkpoints_prefix(work, index)}{batch:05d}.json"


def heartbeats_prefix(work: str) -> str:
    return f"{work}active/"


def heartbeat_key(work: str, index: int) -> str:
    """Index `index`'s heartbeat: present, and recent, while a pod works on it."""
    return f"{heartbeats_prefix(work)}{index:05d}.json"


CACHE_PREFIX = "cache/"


def cache_key(identity: str) -> str:
    """The result cache's entry for one image content: its variants by parameters (see cache.py). One object
    an image, so a job's planning asks S3 once per image, whatever its number of targets."""
    return f"{CACHE_PREFIX}{identity}.json"


def default_output_prefix(namespace: str, name: str) -> str:
    return f"results/{namespace}/{name}/"


def upload_record_key(namespace: str, name: str) -> str:
    return f"uploads/{namespace}/{name}.json"


def original_key(sha256_hex: str, extension: str) -> str:
    """Relative to UPLOADS_SOURCE_PREFIX, as it goes into `spec.source.keys`."""
    return f"{sha256_hex}.{extension}"


def source_object_key(prefix: str, key: str) -> str:
    return f"{prefix}{key}"


def image_id(object_key: str, source_prefix: str) -> str:
    """The key relative to the source prefix, without its extension: `a/b/photo.jpg` -> `a/b/photo`."""
    relative = object_key[len(source_prefix):] if object_key.startswith(source_prefix) else object_key
    head, tail = posixpath.split(relative)
    stem, _ext = posixpath.splitext(tail)
    return posixpath.join(head, stem or tail)


def output_key(output_prefix: str, image: str, target: str, extension: str) -> str:
    return f"{output_prefix}{image}/{target}.{extension}"
