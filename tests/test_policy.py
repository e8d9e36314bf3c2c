"""The storage policy: what a ResizeJob in a namespace may read and write (operator/policy.py)."""

from __future__ import annotations

import pytest
from kresize_common.spec import normalize_spec
from kresize_operator.policy import PolicyViolation, StoragePolicy, check

POLICY = StoragePolicy("kresize", frozenset({"team-photos"}))


def verdict(source: dict, output: dict | None = None, namespace: str = "team-a") -> str:
    spec = normalize_spec({"source": source, "targets": [{"name": "t", "width": 10}], **({"output": output}
                                                                                       if output else {})})
    out = spec.get("output") or {}
    try:
        check(spec, namespace, POLICY, source_bucket=spec["source"].get("bucket") or "kresize",
              output_bucket=out.get("bucket") or "kresize",
              output_prefix=out.get("prefix") or f"results/{namespace}/job/")
    except PolicyViolation as error:
        return str(error)
    return "ok"


@pytest.mark.parametrize(("source", "output"), [
    ({"prefix": "samples/"}, None),
    ({"prefix": "photos/2024/"}, {"prefix": "results/team-a/web/"}),
    ({"prefix": "originals/", "keys": ["ab12.jpg"]}, None),  # the API's way: named keys only
    ({"prefix": "results/team-a/old/"}, None),  # re-process the namespace's own outputs
    ({"bucket": "team-photos", "prefix": ""}, {"bucket": "team-photos", "prefix": "out/"}),
])
def test_allowed(source, output):
    assert verdict(source, output) == "ok"


@pytest.mark.parametrize(("source", "output", "rule"), [
    ({"bucket": "other-tenant", "prefix": "x/"}, None, "source bucket 'other-tenant' is not allowed"),
    ({"prefix": "x/"}, {"bucket": "other-tenant"}, "output bucket 'other-tenant' is not allowed"),
    ({"prefix": "x/"}, {"prefix": "results/team-b/"}, "outside 'results/team-a/'"),
    ({"prefix": "x/"}, {"prefix": "originals/"}, "outside 'results/team-a/'"),
    ({"prefix": ""}, None, "empty source prefix"),
    ({"keys": ["a.jpg"]}, {"prefix": "samples/"}, "outside 'results/team-a/'"),
    ({"prefix": "originals/"}, None, "would list 'originals/'"),
    ({"prefix": "orig"}, None, "would list 'originals/'"),
    ({"prefix": "jobs/team-b/"}, None, "kresize's own records"),
    ({"prefix": "uploads/"}, None, "kresize's own records"),
    ({"prefix": "j"}, None, "kresize's own records"),
    ({"prefix": "jobs/", "keys": ["team-b/x/uid/plan.json"]}, None, "kresize's own records"),
    ({"prefix": "results/team-b/"}, None, "other namespaces' results"),
    ({"prefix": "results/"}, None, "other namespaces' results"),
    ({"prefix": "results/", "keys": ["team-b/job/a/t.jpg"]}, None, "other namespaces' results"),
])
def test_forbidden_with_the_rule_named(source, output, rule):
    assert rule in verdict(source, output)


def test_the_namespace_decides_whose_results_are_own():
    assert verdict({"prefix": "results/team-b/x/"}, None, namespace="team-b") == "ok"
    assert "other namespaces' results" in verdict({"prefix": "results/team-b/x/"}, None, namespace="team-a")
