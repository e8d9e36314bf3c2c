"""Every example in manifests/examples/ runs as written on the platform, reading what `make up` seeds.

The e2e suite does the same on a real cluster with `kubectl apply`; here the manifests are created through
the emulated apiserver and run by the real operator and resizer (under their pods' rules).
"""

from __future__ import annotations

import pytest
import yaml
from conftest import NAMESPACE
from harness.examples import EXAMPLES, VALID_EXAMPLES, check_example_outputs, samples_module
from harness.procs import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def samples(platform, corpus):
    return samples_module().seed(platform.s3, "kresize", corpus)


@pytest.mark.parametrize("example", VALID_EXAMPLES)
def test_example_runs_as_written(platform, samples, example):
    manifest = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text())
    name = manifest["metadata"]["name"]
    platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", manifest)
    try:
        status = wait_for(lambda: (platform.resizejob(name).get("status") or {}).get("phase")
                          in {"Succeeded", "PartiallyFailed", "Failed"} and platform.resizejob(name)["status"],
                          300, message=f"example {example} to finish")
        check_example_outputs(platform.s3, manifest, status, samples)
    finally:
        platform.custom.delete_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", name)


def test_every_example_is_covered():
    """A new example file is picked up by the glob above; this guards the glob against matching nothing."""
    assert {"thumbnails", "multi-target"} <= set(VALID_EXAMPLES)
