"""The upload endpoint under load and under fuzzing, on the whole platform.

- 100 concurrent uploads of 4 images each, drawn from a pool so that requests share originals, while the
  apiserver fails 20 of the creates: every accepted job finishes with the right counts, the only 5xx are the
  documented 503s, and once the grace period has passed no original is left that no job uses.
- Random form fields (hypothesis): never a 5xx, and a refused request leaves nothing in S3.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import random

import httpx
import pytest
from conftest import BUCKET, ORPHAN_GRACE_SECONDS
from harness.images import noise_png
from harness.kube import Fault
from harness.procs import wait_for
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kresize_common import layout

pytestmark = pytest.mark.slow
TERMINAL = {"Succeeded", "PartiallyFailed", "Failed"}


def key_of(data: bytes) -> str:
    return layout.UPLOADS_SOURCE_PREFIX + layout.original_key(hashlib.sha256(data).hexdigest(), "png")


def test_100_concurrent_uploads_with_failing_creates(platform, kube):
    emulator, _ = kube
    salt = os.urandom(4).hex()
    pool = [noise_png(12, f"{salt}-{i}") for i in range(12)]
    picks = [random.Random(f"{salt}{n}").sample(range(len(pool)), 4) for n in range(100)]
    emulator.inject(Fault("resizejobs", "fail", times=20))

    def submit(n: int) -> httpx.Response:
        files = [("files", (f"{i}.png", pool[i])) for i in picks[n]]
        with platform.client(timeout=120) as client:
            return client.post("/v1/jobs", files=files, data={"width": "6"})

    with concurrent.futures.ThreadPoolExecutor(20) as workers:
        responses = list(workers.map(submit, range(100)))
    codes = [r.status_code for r in responses]
    assert sorted(set(codes)) == [202, 503] and codes.count(503) == 20, codes
    accepted = {r.json()["name"]: n for n, r in enumerate(responses) if r.status_code == 202}

    def finished() -> bool:
        return all((platform.resizejob(name).get("status") or {}).get("phase") in TERMINAL for name in accepted)

    wait_for(finished, 600, interval=2, message="every accepted job to finish")
    for name in accepted:
        status = platform.resizejob(name)["status"]
        assert (status["phase"], status["total"], status["succeeded"], status["failed"]) == \
            ("Succeeded", 4, 4, 0), (name, status)
    used = {key_of(pool[i]) for n in accepted.values() for i in picks[n]}
    ours = {key_of(data) for data in pool}

    def only_used_originals_left() -> bool:
        present = {o.object_name for o in platform.s3.list_objects(BUCKET, prefix="originals/", recursive=True)}
        return present & ours == used

    wait_for(only_used_originals_left, ORPHAN_GRACE_SECONDS + 30, interval=1, message="orphans to be collected")


FIELDS = ["width", "height", "fit", "format", "quality", "upscale", "background", "name", "targets", "grayscale",
          "blur", "sharpen", "parallelism", "widht", "files"]
VALUES = st.one_of(
    st.sampled_from(["", "0", "1", "-1", "10", "10.0", "1e309", "nan", "inf", "-inf", "true", "no", "cover",
                     "stretch", "webp", "#fff", "#ffffff", "[]", "[{}]", "{}", "null", "😀", "\x00", "a" * 300,
                     '[{"name":"t","width":8}]', '[{"name":"t","width":8.5}]', "[" * 5000]),
    st.integers(-2**70, 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=40),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fields=st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=5))
def test_random_form_fields_never_break_the_api(platform, fields):
    def written_by_requests() -> set[str]:  # what an upload writes: originals and its upload record
        return {o.object_name for prefix in ("originals/", "uploads/")
                for o in platform.s3.list_objects(BUCKET, prefix=prefix, recursive=True)}

    before = written_by_requests()
    with platform.client() as client:
        response = client.post("/v1/jobs", files=[("files", ("a.png", noise_png(12, 7)))], data=fields)
    assert response.status_code in (202, 400, 413, 415, 422), (fields, response.status_code, response.text)
    if response.status_code == 202:
        platform.custom.delete_namespaced_custom_object("kresize.dev", "v1alpha1", "default", "resizejobs",
                                                        response.json()["name"])
    else:
        assert written_by_requests() - before == set(), fields
