"""The batch/v1 Job that runs a ResizeJob's shards: a pure function of the ResizeJob and the plan."""

from __future__ import annotations

from typing import Any

from kresize_common.records import PodEnv
from kresize_common.resizejob import ResizeJobSpec

from .config import OperatorSettings
from .planning import ShardPlan

RESIZER_UID = 65532
LABEL_RESIZEJOB = "kresize.dev/resizejob"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGED_BY = "kresize-operator"  # on our Jobs and their pods: what the operator watches and counts


def labels_for(resizejob_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "kresize-resizer",
        "app.kubernetes.io/component": "resizer",
        "app.kubernetes.io/part-of": "kresize",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_RESIZEJOB: resizejob_name[:63].rstrip("-_."),
    }


def build_job(
    *, name: str, namespace: str, owner_name: str, spec: dict[str, Any], plan: ShardPlan,
    parallelism: int, work_prefix: str, config: OperatorSettings,
) -> dict[str, Any]:
    """An Indexed Job: index i processes shard i. Credentials come only from the named Secret. The caller
    makes the ResizeJob its owner (kopf.append_owner_reference)."""
    retry = ResizeJobSpec.from_dict(spec).retry  # as stored: the CRD's defaults applied
    labels = labels_for(owner_name)
    secret = config.job_s3_secret
    env = [
        {"name": "KRESIZE_S3_ENDPOINT", "value": config.pod_s3_endpoint},
        {"name": "KRESIZE_S3_SECURE", "value": "true" if config.pod_s3_secure else "false"},
        {"name": "KRESIZE_S3_REGION", "value": config.s3.region},
        {"name": "KRESIZE_S3_BUCKET", "value": config.s3.bucket},
        {"name": "KRESIZE_S3_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": secret, "key": "accessKey"}}},
        {"name": "KRESIZE_S3_SECRET_KEY", "valueFrom": {"secretKeyRef": {"name": secret, "key": "secretKey"}}},
        {"name": PodEnv.WORK_PREFIX, "value": work_prefix},
        *config.limits.job_env(),
        {"name": PodEnv.S3_RETRY_SECONDS, "value": str(config.s3_retry_seconds)},
    ]
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": RESIZER_UID, "runAsGroup": RESIZER_UID, "fsGroup": RESIZER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": "resizer",
            "image": config.resizer_image,
            "imagePullPolicy": config.resizer_pull_policy,
            "args": ["run"],
            "env": env,
            "resources": config.resources,
            "securityContext": {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "256Mi"}}],
    }
    if config.resizer_service_account:
        pod_spec["serviceAccountName"] = config.resizer_service_account
    job_spec: dict[str, Any] = {
        "completionMode": "Indexed",
        # No replacement pod beside one still terminating (checkpointing): a Job never exceeds its parallelism.
        "podReplacementPolicy": "Failed",
        "completions": plan.shards,
        "parallelism": parallelism,
        # Created suspended: the scheduler starts it (suspend false, its share as parallelism) when admitted.
        "suspend": True,
        "backoffLimitPerIndex": retry.backoff_limit_per_index,
        # A pod stopped by a scale-down or a deletion (SIGTERM: it checkpoints and exits STOPPED_EXIT_CODE, or
        # the kubelet marks it DisruptionTarget) is not a failure of its shard: its retry skips finished images.
        "podFailurePolicy": {"rules": [
            {"action": "Ignore", "onExitCodes": {"containerName": "resizer", "operator": "In",
                                                 "values": [PodEnv.STOPPED_EXIT_CODE]}},
            {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        ]},
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    if retry.active_deadline_seconds:
        job_spec["activeDeadlineSeconds"] = retry.active_deadline_seconds
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
        },
        "spec": job_spec,
    }
