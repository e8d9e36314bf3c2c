"""Where a ResizeJob may read and write in S3: a pure function of the spec, the namespace and the policy.

Anyone who may create a ResizeJob in a namespace must not be able to read another tenant's originals or
outputs, or overwrite them, through the operator's S3 credentials. The default policy:

- buckets: source and output bucket are the operator's bucket (KRESIZE_S3_BUCKET), unless more are
  allowed (KRESIZE_ALLOWED_BUCKETS, comma-separated);
- output: under `results/<namespace>/` in the operator's bucket (any prefix in another allowed bucket);
- sources in the operator's bucket: never kresize's own bookkeeping (`uploads/`, `jobs/`), nor another
  namespace's results; the API's content-addressed `originals/` only through the keys a job lists (their
  names are the SHA-256 of the content, so a key is a capability), never by listing a prefix.

A spec outside the policy fails with reason Forbidden, before anything is read or written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kresize_common import layout

NEVER_READ = ("uploads/", "jobs/")  # the API's upload records and the operator's work files
RESULTS_ROOT = "results/"


class PolicyViolation(Exception):
    """The spec reads or writes where the policy does not allow; the message names the rule."""


@dataclass(frozen=True)
class StoragePolicy:
    bucket: str  # the operator's own bucket, where the layout's reserved areas live
    extra_buckets: frozenset[str] = frozenset()

    @property
    def allowed_buckets(self) -> frozenset[str]:
        return self.extra_buckets | {self.bucket}


def _overlaps(prefix: str, area: str) -> bool:
    """Whether listing `prefix` can return keys in `area` (or `prefix` lies inside it)."""
    return area.startswith(prefix) or prefix.startswith(area)


def _reaches(read: str, area: str, listing: bool) -> bool:
    """A listed prefix reaches an area it overlaps; a named key only the area it is in."""
    return _overlaps(read, area) if listing else read.startswith(area)


def check(spec: dict[str, Any], namespace: str, policy: StoragePolicy, *, source_bucket: str,
          output_bucket: str, output_prefix: str) -> None:
    """Raise PolicyViolation when the (normalized) spec reaches outside what `namespace` may use."""
    own_results = f"{RESULTS_ROOT}{namespace}/"
    allowed = ", ".join(sorted(policy.allowed_buckets))
    for role, bucket in (("source", source_bucket), ("output", output_bucket)):
        if bucket not in policy.allowed_buckets:
            raise PolicyViolation(f"{role} bucket {bucket!r} is not allowed: allowed buckets are {allowed} "
                                  "(operator setting KRESIZE_ALLOWED_BUCKETS)")
    if output_bucket == policy.bucket and not output_prefix.startswith(own_results):
        raise PolicyViolation(f"output prefix {output_prefix!r} is outside {own_results!r}: in bucket "
                              f"{policy.bucket!r} a job writes only under results/<its namespace>/")
    if source_bucket != policy.bucket:
        return
    source = spec["source"]
    prefix, keys = source.get("prefix", ""), source.get("keys")
    listing = not keys
    if listing and not prefix:
        raise PolicyViolation(f"an empty source prefix lists all of bucket {policy.bucket!r}, every tenant's "
                              "data: give a prefix, or name the objects in source.keys")
    for read in [layout.source_object_key(prefix, key) for key in keys] if keys else [prefix]:
        what = f"source prefix {read!r}" if listing else f"source key {read!r}"
        if any(_reaches(read, area, listing) for area in NEVER_READ):
            raise PolicyViolation(f"{what} reaches kresize's own records ({', '.join(NEVER_READ)}), "
                                  "which no job may read")
        if _reaches(read, RESULTS_ROOT, listing) and not read.startswith(own_results):
            raise PolicyViolation(f"{what} reaches other namespaces' results: a job reads results only "
                                  f"under {own_results!r}")
        if listing and _overlaps(read, layout.UPLOADS_SOURCE_PREFIX):
            raise PolicyViolation(f"{what} would list {layout.UPLOADS_SOURCE_PREFIX!r}, where everyone's "
                                  "uploads are: name the objects there in source.keys instead")
