"""The result cache's key parts: what makes a variant made before the same as one a job asks for.

A variant is reusable when its source has the same content (`content_identity`) and it was made with the same
target parameters and operations (`params_hash`), in the same scope (`cache_scope`: namespace and tenant). The
entry of a content is at layout.cache_key(scoped identity), a records.CacheEntry of its variants by params hash.
The functions are pure, and the resizer (which writes entries) and the operator
(which reads them) call the same ones, so the two can never disagree on a key.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from .layout import UPLOADS_SOURCE_PREFIX
from .spec import Operations, Target, apply_defaults, spec_schema

# Part of every hash: raise it when the pipeline's output for the same parameters changes (a new resampling
# filter, an encoder setting), so no variant made the old way is reused.
PIPELINE_VERSION = 2

_ORIGINAL_NAME = re.compile(r"([0-9a-f]{64})\.[a-z0-9]+")  # layout.original_key: <sha256>.<ext>
_SAFE_ETAG = re.compile(r"[A-Za-z0-9_-]{1,128}")  # hex, or hex-<parts> for multipart uploads


def content_identity(key: str, etag: str | None, *, originals_trusted: bool = True) -> str | None:
    """What identifies the content of a source object, or None when nothing cheap does (no reuse then).

    An uploaded original (`originals/<sha256>.<ext>`) is named by its content: `sha256-<hex>`, but only where
    the API alone writes such names (`originals_trusted`: the platform bucket); elsewhere anyone could give an
    object another image's name. Any other object: its S3 ETag (a digest of its content that no writer chooses),
    `etag-<etag>`, as a listing, a HEAD or a GET return it (with or without its quotes)."""
    if originals_trusted and key.startswith(UPLOADS_SOURCE_PREFIX):
        named = _ORIGINAL_NAME.fullmatch(key[len(UPLOADS_SOURCE_PREFIX):])
        if named:
            return f"sha256-{named.group(1)}"
    if etag:
        bare = etag.strip().strip('"')
        if _SAFE_ETAG.fullmatch(bare):  # it goes into an object key
            return f"etag-{bare}"
    return None


_SCOPE_PART = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._-]{0,62})?")  # a namespace or a label value


def cache_scope(namespace: str, tenant: str | None) -> str:
    """Whose results a job may reuse: its tenant's in its namespace (jobs made through the API carry the tenant
    label), or its namespace's (kubectl jobs). Scoped this way, `reused` never tells a tenant that someone else
    has processed the same image."""
    parts = [namespace, tenant or "-"]
    if not all(p == "-" or _SCOPE_PART.fullmatch(p) for p in parts):
        raise ValueError(f"not a cache scope: {parts}")
    return "/".join(parts)


def scoped_identity(scope: str, identity: str | None) -> str | None:
    """The identity within its scope (an empty scope: shared by everyone, the local resizer's case)."""
    return f"{scope}/{identity}" if identity and scope else identity


_TARGETS_SCHEMA = spec_schema()["properties"]["targets"]["items"]
_OPERATIONS_SCHEMA = spec_schema()["properties"]["operations"]


def params_hash(target: Mapping[str, Any], operations: Mapping[str, Any] | None) -> str:
    """The sha256 (hex) of what decides a variant's pixels and encoding: the target without its name (which
    only names the output file) and the job's operations, normalized so that equal parameters hash equally
    however they were written: the CRD's defaults filled in, `64.0` as `64`, `#FFFFFF` as `#ffffff`.

    Raises spec.SpecError for parameters the pipeline cannot use (as the resizer would)."""
    typed = Target.from_dict(dict(target))
    ops = Operations.from_dict(dict(operations or {}))
    # Every field of the stored target counts (even one the typed view does not carry), typed values win.
    normalized = apply_defaults(_TARGETS_SCHEMA, dict(target))
    normalized.pop("name", None)
    normalized.update(width=typed.width, height=typed.height, quality=typed.quality,
                      background="#{:02x}{:02x}{:02x}".format(*typed.background))
    normalized_ops = apply_defaults(_OPERATIONS_SCHEMA, dict(operations or {}))
    normalized_ops.update(grayscale=ops.grayscale, blur=ops.blur, sharpen=ops.sharpen)
    canonical = json.dumps({"version": PIPELINE_VERSION, "target": normalized, "operations": normalized_ops},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
