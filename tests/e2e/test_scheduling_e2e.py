"""The pod budget on a real cluster: one budget shared by all ResizeJobs, suspend/resume, deletion with cleanup.

The budget is read from the operator Deployment's KRESIZE_MAX_PODS (chart value operator.maxPods; 4 with
charts/kresize/values-kind.yaml). Each test creates its own uniquely named ResizeJobs from copies of the corpus
under e2e/<name>/ and removes them, their sources and their variants afterwards.
"""

from __future__ import annotations

import json
import math
import secrets
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import kubernetes
import pytest
from conftest import CORPUS
from harness.procs import wait_for
from kresize_common.s3 import remove_prefix
from kubernetes.client.exceptions import ApiException
from test_cluster import TERMINAL, delete_resizejob, wait_finished

pytestmark = pytest.mark.e2e

MANAGED = "app.kubernetes.io/managed-by=kresize-operator"  # every resizer pod, of every ResizeJob
OF_JOB = "kresize.dev/resizejob"  # the pod label naming its ResizeJob
SLOW_TARGETS = [{"name": "a", "width": 1200, "format": "avif"}, {"name": "w", "width": 400, "format": "webp"}]
FINISH_TIMEOUT = 900  # real pods start slowly, and AVIF at 1200 px takes a while on a laptop
SHARD_MIN_IMAGES = 20  # the operator's default shard minimum (KRESIZE_SHARD_MIN_IMAGES)


def sources() -> list:
    return sorted((CORPUS / "orientation").glob("*.jpg")) + sorted((CORPUS / "photos").glob("*.jpg"))


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def upload_copies(cluster, name: str, copies: int) -> int:
    """`copies` copies of the corpus photos under e2e/<name>/<copy>/; returns how many objects."""
    keys = [(f"e2e/{name}/{copy}/{path.name}", path) for copy in range(copies) for path in sources()]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda item: cluster.s3.fput_object(cluster.bucket, item[0], str(item[1])), keys))
    return len(keys)


def create(cluster, name: str, **spec) -> None:
    cluster.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", cluster.namespace, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": name},
        "spec": {"source": {"prefix": f"e2e/{name}/"}, "targets": SLOW_TARGETS, "reuse": False, **spec}})


def status_of(cluster, name: str) -> dict:
    return cluster.resizejob(name).get("status") or {}


def done(status: dict) -> int:
    """Images done from status.progress ("done/total")."""
    return int((status.get("progress") or "0/0").split("/")[0])


def condition(status: dict, type_: str) -> dict:
    return {c["type"]: c for c in status.get("conditions") or []}.get(type_, {})


def objects(cluster, bucket: str, prefix: str) -> list[str]:
    return [o.object_name for o in cluster.s3.list_objects(bucket, prefix=prefix, recursive=True)]


def gone(read) -> bool:
    try:
        read()
    except ApiException as error:
        if error.status == 404:
            return True
        raise
    return False


def live_pods(cluster, selector: str = MANAGED) -> list:
    """Pods that exist and are not finished: pending, running, and terminating (deletionTimestamp set)."""
    return [p for p in cluster.core.list_namespaced_pod(cluster.namespace, label_selector=selector).items
            if p.status.phase not in ("Succeeded", "Failed")]


def describe(pods: list) -> list[str]:
    return [f"{p.metadata.name} ({(p.metadata.labels or {}).get(OF_JOB)}, {p.status.phase}"
            f"{', terminating' if p.metadata.deletion_timestamp else ''})" for p in pods]


def pod_budget(cluster) -> int:
    """KRESIZE_MAX_PODS of the operator Deployment in the namespace."""
    apps = kubernetes.client.AppsV1Api(cluster.api)
    deployments = apps.list_namespaced_deployment(cluster.namespace,
                                                  label_selector="app.kubernetes.io/component=operator").items
    for deployment in deployments:
        for container in deployment.spec.template.spec.containers:
            for env in container.env or []:
                if env.name == "KRESIZE_MAX_PODS" and env.value:
                    return int(env.value)
    pytest.fail(f"no operator Deployment with KRESIZE_MAX_PODS in namespace {cluster.namespace} "
                f"(found {[d.metadata.name for d in deployments]})")


def wait_no_stray_pods(cluster, timeout: float = 180) -> None:
    """Pods of ResizeJobs deleted before (still checkpointing) are no longer the scheduler's to count; wait
    until they are gone, so the budget check counts only pods the scheduler accounts for."""
    def stray() -> list:
        items = cluster.custom.list_namespaced_custom_object("kresize.dev", "v1alpha1", cluster.namespace,
                                                             "resizejobs")["items"]
        owners = {rj["metadata"]["name"][:63].rstrip("-_.") for rj in items}
        return [p for p in live_pods(cluster) if (p.metadata.labels or {}).get(OF_JOB) not in owners]
    wait_for(lambda: not stray(), timeout, interval=2, message="pods of deleted ResizeJobs to go")


def clean(cluster, name: str, outputs: dict) -> None:
    """Best effort after a test: the ResizeJob (its finalizer removes the work files), sources and variants."""
    try:
        delete_resizejob(cluster, name)
        remove_prefix(cluster.s3, cluster.bucket, f"e2e/{name}/")
        remove_prefix(cluster.s3, outputs.get("outputBucket") or cluster.bucket,
                      outputs.get("outputPrefix") or f"results/{cluster.namespace}/{name}/")
    except Exception as error:  # noqa: BLE001 - cleanup must not hide the test's own outcome
        warnings.warn(f"cleanup of {name} failed: {type(error).__name__}: {error}", stacklevel=2)


def test_two_jobs_share_a_small_budget(cluster):
    budget = pod_budget(cluster)
    # Enough images that each job alone has at least `budget` shards (each of at least SHARD_MIN_IMAGES).
    copies = max(4, math.ceil(budget * SHARD_MIN_IMAGES / len(sources())))
    names = [unique("e2e-share-a"), unique("e2e-share-b")]
    outputs: dict[str, dict] = {name: {} for name in names}
    try:
        totals = {name: upload_copies(cluster, name, copies) for name in names}
        wait_no_stray_pods(cluster)
        for name in names:
            create(cluster, name, parallelism=budget)
        most, shared = 0, False
        deadline = time.monotonic() + FINISH_TIMEOUT
        while True:
            pods = live_pods(cluster)
            most = max(most, len(pods))
            assert len(pods) <= budget, f"{len(pods)} resizer pods exist, budget {budget}: {describe(pods)}"
            statuses = {name: status_of(cluster, name) for name in names}
            for name, status in statuses.items():
                outputs[name] = status.get("results") or outputs[name]
            if all(int(s.get("parallelism") or 0) >= 1 for s in statuses.values()):
                shared = True
            if all(s.get("phase") in TERMINAL for s in statuses.values()):
                break
            if time.monotonic() > deadline:
                where = {n: (s.get("phase"), s.get("progress")) for n, s in statuses.items()}
                raise TimeoutError(f"timed out after {FINISH_TIMEOUT}s waiting for both jobs to finish: {where}")
            time.sleep(0.5)
        assert shared, "the two jobs never both had pods at the same time"
        assert most >= 2, f"at most {most} resizer pods ever ran"
        for name, status in statuses.items():
            assert status["phase"] == "Succeeded", (name, status)
            assert (status["total"], status["succeeded"], status["failed"]) == (totals[name], totals[name], 0)
            assert status["parallelism"] == 0
    finally:
        for name in names:
            clean(cluster, name, outputs[name])


def test_suspend_and_resume(cluster):
    name = unique("e2e-suspend")
    outputs: dict = {}
    try:
        total = upload_copies(cluster, name, 6)
        create(cluster, name, parallelism=2)
        started = wait_for(lambda: (s := status_of(cluster, name)).get("phase") in TERMINAL | {"Running"}
                           and done(s) > 0 and s, 600, interval=1, message=f"{name} to make progress")
        outputs = started["results"]
        assert started["phase"] == "Running" and done(started) < total, started  # else: make the job bigger
        cluster.kubectl("patch", "rj", name, "--type=merge", "-p", json.dumps({"spec": {"suspend": True}}))
        selector = f"{OF_JOB}={name}"

        def suspended() -> dict | None:
            status = status_of(cluster, name)
            if status.get("phase") != "Suspended" or status.get("parallelism") != 0:
                return None
            if not cluster.batch.read_namespaced_job(status["jobName"], cluster.namespace).spec.suspend:
                return None
            if [p for p in live_pods(cluster, selector) if not p.metadata.deletion_timestamp]:
                return None
            return status
        status = wait_for(suspended, 120, interval=1, message=f"{name} Suspended with no running pods")
        assert condition(status, "Suspended").get("status") == "True", status
        assert condition(status, "Admitted").get("status") == "False", status
        # It stays suspended: the Job starts no pod meanwhile, and the stopped pods checkpoint and exit.
        hold_until = time.monotonic() + 10
        while time.monotonic() < hold_until:
            assert status_of(cluster, name).get("phase") == "Suspended"
            running = [p for p in live_pods(cluster, selector) if not p.metadata.deletion_timestamp]
            assert running == [], describe(running)
            time.sleep(1)
        wait_for(lambda: not live_pods(cluster, selector), 120, interval=2, message="the stopped pods to exit")
        assert done(status_of(cluster, name)) < total
        cluster.kubectl("patch", "rj", name, "--type=merge", "-p", json.dumps({"spec": {"suspend": False}}))
        status = wait_finished(cluster, name, timeout=FINISH_TIMEOUT)
        assert status["phase"] == "Succeeded", status
        assert (status["total"], status["succeeded"], status["failed"]) == (total, total, 0)
        variants = objects(cluster, status["results"]["outputBucket"], status["results"]["outputPrefix"])
        assert len(variants) == total * len(SLOW_TARGETS)
    finally:
        clean(cluster, name, outputs)


def test_delete_with_cleanup(cluster):
    name = unique("e2e-delete")
    outputs: dict = {}
    try:
        total = upload_copies(cluster, name, 4)
        create(cluster, name, parallelism=2, cleanup={"outputs": "Delete"})
        rj = wait_for(lambda: (r := cluster.resizejob(name)).get("status", {}).get("results") and r, 300,
                      interval=1, message=f"{name} planned")
        uid, status = rj["metadata"]["uid"], rj["status"]
        outputs = status["results"]
        job_name = status["jobName"]
        work = f"jobs/{cluster.namespace}/{name}/{uid}/"
        out_bucket, out_prefix = outputs["outputBucket"], outputs["outputPrefix"]
        assert objects(cluster, cluster.bucket, work), f"no work files under {work}"
        wait_for(lambda: objects(cluster, out_bucket, out_prefix), 600, interval=1,
                 message=f"variants under s3://{out_bucket}/{out_prefix}")
        cluster.kubectl("delete", "rj", name, "--wait=false")
        wait_for(lambda: gone(lambda: cluster.resizejob(name)), 120, interval=1,
                 message="the ResizeJob gone (its finalizer done)")
        wait_for(lambda: gone(lambda: cluster.batch.read_namespaced_job(job_name, cluster.namespace)), 120,
                 interval=1, message=f"Job {job_name} gone")
        selector = f"{OF_JOB}={name}"
        wait_for(lambda: not cluster.core.list_namespaced_pod(cluster.namespace, label_selector=selector).items,
                 120, interval=1, message="its pods gone")
        assert cluster.batch.list_namespaced_job(cluster.namespace, label_selector=selector).items == []
        # Checked once no pod of it is left, so nothing written by a stopping pod can appear later.
        assert objects(cluster, cluster.bucket, work) == []
        assert objects(cluster, out_bucket, out_prefix) == []
        assert len(objects(cluster, cluster.bucket, f"e2e/{name}/")) == total  # the sources are never deleted
    finally:
        clean(cluster, name, outputs)
