"""The Job the operator creates: Indexed, owned, least privilege, no credentials inline."""

import json

import kubernetes_validate
from kresize_common.records import PodEnv
from kresize_common.spec import normalize_spec
from kresize_operator.config import OperatorSettings
from kresize_operator.jobs import build_job
from kresize_operator.planning import ShardPlan

CONFIG = OperatorSettings(
    namespace="ns", s3_endpoint="127.0.0.1:9", s3_access_key="AKIA-SECRET-ID", s3_secret_key="very-secret",
    job_s3_secret="kresize-s3", job_s3_endpoint="minio:9000", resizer_cpu_request="500m",
)


def make_job(**spec_extra):
    spec = normalize_spec({"source": {"prefix": "p/"}, "targets": [{"name": "t", "width": 10}], **spec_extra})
    return build_job(name="j-resize", namespace="ns", owner_name="j", spec=spec,
                     plan=ShardPlan(total=20, shard_size=8, shards=3), parallelism=2, work_prefix="jobs/ns/j/uid-1/",
                     config=CONFIG)


def test_indexed_job_with_retries():
    job = make_job(retry={"backoffLimitPerIndex": 5, "activeDeadlineSeconds": 600})
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert (spec["completions"], spec["parallelism"]) == (3, 2)
    assert spec["backoffLimitPerIndex"] == 5 and spec["activeDeadlineSeconds"] == 600
    assert "ownerReferences" not in job["metadata"]  # the handler adds it with kopf (test_platform.py)
    assert spec["template"]["metadata"]["labels"]["kresize.dev/resizejob"] == "j"


def test_pods_are_locked_down():
    pod = make_job()["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert container["resources"]["limits"]["memory"] == "2Gi"  # the default: two worst-case images at once
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_credentials_only_by_secret_reference():
    job = make_job()
    text = json.dumps(job)
    assert "AKIA-SECRET-ID" not in text and "very-secret" not in text
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["KRESIZE_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "kresize-s3", "key": "accessKey"}
    assert env["KRESIZE_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "kresize-s3", "key": "secretKey"}
    assert env["KRESIZE_S3_ENDPOINT"]["value"] == "minio:9000"  # the pods' endpoint, not the operator's
    assert env["KRESIZE_WORK_PREFIX"]["value"] == "jobs/ns/j/uid-1/"


def test_a_stopped_pod_is_not_a_failure_and_the_job_is_valid_for_the_apiserver():
    job = make_job()
    rules = job["spec"]["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onExitCodes": {"containerName": "resizer", "operator": "In",
                                                            "values": [PodEnv.STOPPED_EXIT_CODE]}}
    assert rules[1]["onPodConditions"] == [{"type": "DisruptionTarget", "status": "True"}]
    kubernetes_validate.validate(job, "1.30.0", strict=True)  # raises on any field the apiserver would refuse
