"""Properties of the CRD (the single source of truth) that a real apiserver and `kubectl explain` rely on."""

from __future__ import annotations

from pathlib import Path

import yaml

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


def test_spec_is_bounded_so_the_immutability_rule_fits_the_cel_cost_budget():
    spec = SCHEMA["properties"]["spec"]
    assert spec["x-kubernetes-validations"] == [
        {"rule": "self == oldSelf", "message": "spec is immutable; create a new ResizeJob instead"}]
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
                       "Age": ".metadata.creationTimestamp"}
    conditions = SCHEMA["properties"]["status"]["properties"]["conditions"]["items"]["properties"]
    assert {"type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"} <= set(conditions)
