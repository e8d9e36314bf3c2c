"""Properties of the CRD (the single source of truth) that a real apiserver and `kubectl explain` rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from kresize_common.resizejob import ResizeJobSpec, ResizeJobStatus
from kresize_common.spec import SpecError, immutable_spec_fields, normalize_spec

CRD = yaml.safe_load((Path(__file__).resolve().parents[1] / "manifests/crds/resizejobs.kresize.dev.yaml").read_text())
(VERSION,) = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]


def nodes(node: dict, path: str = ""):
    yield path, node
    for key, sub in node.get("properties", {}).items():
        yield from nodes(sub, f"{path}.{key}")
    if "items" in node:
        yield from nodes(node["items"], f"{path}[]")


def test_every_field_is_described_for_kubectl_explain():
    missing = [path for path, node in nodes(SCHEMA) if path and path != ".metadata" and not node.get("description")]
    assert missing == []


def test_what_the_job_does_is_immutable_and_how_it_is_scheduled_is_not():
    spec = SCHEMA["properties"]["spec"]
    immutable = {name for name, node in spec["properties"].items()
                 if {"rule": "self == oldSelf", "message": f"spec.{name} is immutable; create a new ResizeJob instead"}
                 in node.get("x-kubernetes-validations", [])}
    assert immutable == {"source", "targets", "operations", "output", "parallelism", "retry", "reuse"}
    assert set(immutable_spec_fields()) == immutable  # what the operator leaves out of kopf's diff base
    assert set(spec["properties"]) - immutable == {"priority", "suspend", "ttlSecondsAfterFinished", "cleanup"}
    # An optional field's transition rule does not see it added or removed: the spec's own rule does.
    assert spec["x-kubernetes-validations"] == [
        {"rule": "has(self.output) == has(oldSelf.output)", "message": "spec.output is immutable; create a new "
                                                                       "ResizeJob instead"}]


def test_spec_is_bounded_so_the_immutability_rules_fit_the_cel_cost_budget():
    spec = SCHEMA["properties"]["spec"]
    unbounded = [path for path, node in nodes(spec, "spec")
                 if (node.get("type") == "string" and "maxLength" not in node)
                 or (node.get("type") == "array" and "maxItems" not in node)]
    assert unbounded == []


def test_names_status_and_printer_columns():
    names = CRD["spec"]["names"]
    assert (CRD["spec"]["group"], VERSION["name"], names["kind"], names["plural"], names["shortNames"]) == (
        "kresize.dev", "v1alpha1", "ResizeJob", "resizejobs", ["rj"])
    assert VERSION["subresources"] == {"status": {}}
    columns = {c["name"]: c["jsonPath"] for c in VERSION["additionalPrinterColumns"]}
    assert columns == {"Phase": ".status.phase", "Done/Total": ".status.progress", "Failed": ".status.failed",
                       "Pods": ".status.parallelism", "Img/s": ".status.imagesPerSecond",
                       "ETA": ".status.estimatedCompletionTime", "Age": ".metadata.creationTimestamp"}
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(conditions)


# --- object keys and prefixes: names, never paths -------------------------------------------------------

FORBIDDEN_IN_KEYS = {chr(c) for c in range(0x20)} | {"\x7f", "\\", "%"}


def safe_key(key: str) -> bool:
    """The rule, written plainly: non-empty segments, none starting with '.', no control character,
    backslash or percent sign (which S3 implementations decode differently)."""
    segments = key.split("/")
    if key.endswith("/"):
        segments = segments[:-1]
    return all(s and not s.startswith(".") for s in segments) and not FORBIDDEN_IN_KEYS & set(key)


def spec_with_key(key: str) -> dict:
    return {"source": {"prefix": "in/", "keys": [key]}, "output": {"prefix": f"results/ns/{key}"},
            "targets": [{"name": "t", "width": 8}]}


@pytest.mark.parametrize("key", ["..", "a/../b", ".", "./a", ".hidden/a.jpg", "a/.git/config", "a\x00b", "a\nb",
                                 "%2e%2e/a", "a%2Fb", "a\\..\\b", "/etc/passwd", "a//b"])
def test_hostile_keys_are_refused(key):
    with pytest.raises(SpecError, match="not a safe object key"):
        normalize_spec(spec_with_key(key))


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet=st.sampled_from(["a", "é", ".", "/", "%", "\\", "\x00", "\n", " ", "-", "2", "e"]),
               min_size=1, max_size=12))
def test_the_crd_pattern_is_exactly_the_safe_key_rule(key):
    try:
        normalize_spec(spec_with_key(key))
        accepted = True
    except SpecError:
        accepted = False
    assert accepted == safe_key(key), key


# --- the generated types (common/kresize_common/resizejob.py) -----------------------------------------------

def test_typed_spec_reads_what_the_apiserver_stores_and_writes_it_back():
    stored = normalize_spec({"source": {"prefix": "in/", "keys": ["a.jpg"]}, "output": {"prefix": "results/n/j/"},
                             "targets": [{"name": "t", "width": 10.0, "height": 8}], "retry": {}})
    spec = ResizeJobSpec.from_dict(stored)
    (target,) = spec.targets
    # Defaults come from the CRD (through normalize_spec), never from Python.
    assert (target.width, target.fit, target.format, target.quality) == (10, "cover", "original", 80)
    assert isinstance(target.width, int)
    assert (spec.operations.grayscale, spec.retry.backoff_limit_per_index, spec.parallelism) == (False, 3, 8)
    assert spec.retry.active_deadline_seconds is None and spec.source.keys == ("a.jpg",)
    assert spec.to_dict() == {**stored, "targets": [{**stored["targets"][0], "width": 10}]}
    with pytest.raises(TypeError):
        ResizeJobSpec.from_dict({**stored, "targets": [{**stored["targets"][0], "width": 10.5}]})


def test_typed_status_reads_what_the_operator_writes():
    raw = {"phase": "Running", "total": 3, "succeeded": 1, "failed": 0, "progress": "1/3",
           "results": {"bucket": "b", "prefix": "p/", "outputBucket": "b", "outputPrefix": "o/"},
           "conditions": [{"type": "Progressing", "status": "True", "reason": "JobCreated"}]}
    status = ResizeJobStatus.from_dict(raw)
    assert status.results is not None and status.results.output_prefix == "o/"
    assert status.conditions is not None and status.conditions[0].reason == "JobCreated"
    assert status.to_dict() == raw
