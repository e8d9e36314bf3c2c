"""kopf handlers: the I/O edge of the operator. Decisions live in planning.py and fairshare.py, manifests in
jobs.py, the budget loop in scheduler.py.

- create/resume: validate, write the work plan to S3, create the Indexed Job suspended (adopting it when it
  already exists) and mark the ResizeJob Queued; the scheduler admits it (un-suspends the Job with its share of
  the pod budget). Every step is idempotent, so a restart at any point converges without a second Job.
- events of ResizeJobs and of our Jobs feed the scheduler (scheduler.py), which counts progress, finishes
  ResizeJobs when their Job finishes, and re-shares the budget: nothing polls a Job.
- delete (a finalizer): stop the pods at once (delete the Job), remove the job's work files from S3, and its
  outputs and uploaded originals as spec.cleanup says.

The configuration is read and validated at start-up (`__main__`), handed to `register()` and to the handlers
through kopf's memo (`memo.config`); nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
import kubernetes
from kresize_common import layout
from kresize_common.cache import cache_scope
from kresize_common.kube import kube_client
from kresize_common.resizejob import ResizeJobSpec
from kresize_common.s3 import make_client
from kresize_common.spec import (
    GROUP,
    PLURAL,
    TENANT_LABEL,
    VERSION,
    SpecError,
    immutable_spec_fields,
    normalize_spec,
)
from kubernetes.client.exceptions import ApiException

from . import gc, metrics, planning, policy, storage
from .config import OperatorSettings
from .jobs import LABEL_MANAGED_BY, MANAGED_BY, build_job
from .planning import ShardPlan
from .scheduler import Scheduler
from .storage import PermanentSourceError, Placement, ensure_plan, placement_for

TERMINAL_PHASES = frozenset({"Succeeded", "PartiallyFailed", "Failed"})
IO_THREADS = 32


def register(registry: kopf.OperatorRegistry, config: OperatorSettings) -> None:
    """Every handler of the operator, on `registry`."""
    kopf.on.login(registry=registry)(kopf.login_via_client)  # a fresh registry has no login of its own
    kopf.on.startup(registry=registry)(configure)
    kopf.on.startup(registry=registry)(start_background)
    kopf.on.cleanup(registry=registry)(stop_background)
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)(start)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(start)
    kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)(clean_up)
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)(observe_resizejob)
    kopf.on.event("batch", "v1", "jobs", labels={LABEL_MANAGED_BY: MANAGED_BY}, registry=registry)(observe_job)


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # The schema prunes unknown status fields, so kopf keeps its bookkeeping in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    # The diff base holds only what may change: the immutable parts of the spec (a source may list 1,000 keys)
    # would double the object's size for nothing.
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration",
        ignored_fields=[f"spec.{field}" for field in immutable_spec_fields()])
    # Only kopf's warnings become Events automatically (a "succeeded" per handler call would flood the
    # namespace); the lifecycle Events (JobCreated, Queued, Running, Succeeded, ...) are posted explicitly.
    settings.posting.level = logging.WARNING
    # The finalizer that makes deletion wait for clean_up (S3 work files, per spec.cleanup).
    settings.persistence.finalizer = f"{GROUP}/cleanup"
    # Namespaced and least-privileged: no cluster-wide CRD/namespace scanning (the Role does not allow it).
    settings.scanning.disabled = True
    settings.watching.server_timeout = 300
    settings.networking.request_timeout = 60
    api = kube_client()
    memo.batch = kubernetes.client.BatchV1Api(api)
    memo.core = kubernetes.client.CoreV1Api(api)
    memo.custom = kubernetes.client.CustomObjectsApi(api)
    memo.s3 = make_client(memo.config.s3)
    memo.census = metrics.Census()
    memo.scheduler = Scheduler(memo.config, memo, recreate_job=lambda rj: ensure_job(memo, rj))


async def start_background(memo: kopf.Memo, **_: Any) -> None:
    # Blocking S3 and Kubernetes calls run in threads (asyncio.to_thread): asyncio's default of cpus + 4 threads
    # would queue a burst of new jobs behind a handful of S3 round trips. The S3 client pools 16 connections.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(IO_THREADS, thread_name_prefix="kresize-io"))
    memo.tasks = [asyncio.create_task(memo.scheduler.run(), name="kresize-scheduler")]
    if memo.config.gc_interval_seconds:
        memo.tasks.append(asyncio.create_task(collect_orphans_forever(memo), name="kresize-gc"))


async def collect_orphans_forever(memo: kopf.Memo) -> None:
    """Every KRESIZE_GC_INTERVAL_SECONDS, delete originals nothing references (gc.py). Errors wait a round."""
    log = logging.getLogger("kresize.operator.gc")
    config: OperatorSettings = memo.config
    grace = datetime.timedelta(seconds=config.orphan_grace_seconds)
    while True:
        try:
            listing = await asyncio.to_thread(memo.custom.list_namespaced_custom_object, GROUP, VERSION,
                                              config.namespace, PLURAL)
            await asyncio.to_thread(gc.collect, memo.s3, config.s3_bucket, listing.get("items", []),
                                    datetime.datetime.now(datetime.UTC), grace)
        except Exception as error:  # noqa: BLE001 - S3 or the apiserver away: try again next round
            log.warning("collecting unreferenced originals failed: %s: %s", type(error).__name__, error)
        await asyncio.sleep(config.gc_interval_seconds)


async def stop_background(memo: kopf.Memo, **_: Any) -> None:
    for task in memo.get("tasks") or []:
        task.cancel()


def post_event(body: kopf.Body, type_: str, reason: str, message: str) -> None:
    """An Event on the ResizeJob (what `kubectl describe rj` shows), queued by kopf's poster."""
    kopf.event(body, type=type_, reason=reason, message=message[:1024])


async def observe_resizejob(body: kopf.Body, uid: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Every ResizeJob event: the phase gauge, and the scheduler's view (a new job, suspend, priority, ...)."""
    memo.census.update(uid, None if type == "DELETED" else body)
    memo.scheduler.observe_resizejob(body, type)


async def observe_job(body: kopf.Body, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Every event of a Job we made: the scheduler counts finished shards and re-shares pods."""
    memo.scheduler.observe_job(body, type)


def _fail(patch: kopf.Patch, generation: int, status: kopf.Status, reason: str, message: str) -> None:
    conditions = list(status.get("conditions") or [])
    now = planning.timestamp()
    conditions = planning.set_condition(conditions, "Progressing", "False", reason, message, generation, now)
    conditions = planning.set_condition(conditions, "Failed", "True", reason, message, generation, now)
    patch.status.update({
        "phase": "Failed", "observedGeneration": generation, "conditions": conditions, "completionTime": now,
    })


def _ensure_job(batch: kubernetes.client.BatchV1Api, job: dict[str, Any]) -> dict[str, Any]:
    """Create the Job, or adopt the one an earlier attempt created (same deterministic name). Answers are read as
    plain JSON (`_preload_content=False`): the client's model classes cost milliseconds of CPU per Job."""
    meta = job["metadata"]
    try:
        response: Any = batch.create_namespaced_job(meta["namespace"], cast(Any, job), _preload_content=False)
        return cast(dict[str, Any], json.loads(response.data))
    except ApiException as error:
        if error.status != 409:
            raise
    found: Any = batch.read_namespaced_job(meta["name"], meta["namespace"], _preload_content=False)
    existing = json.loads(found.data)
    owners = (existing.get("metadata") or {}).get("ownerReferences") or []
    if not any(o.get("uid") == meta["ownerReferences"][0]["uid"] for o in owners):
        raise kopf.PermanentError(f"a Job named {meta['name']} exists and is not owned by this ResizeJob")
    return cast(dict[str, Any], existing)


class Invalid(Exception):
    """The ResizeJob can never run as it is: it fails with this reason and message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


async def plan_work(memo: kopf.Memo, spec: Mapping[str, Any], name: str, namespace: str,
                    uid: str, tenant: str | None = None) -> tuple[dict[str, Any], Placement, ShardPlan]:
    """Validate the spec and the storage policy, and write (or find) the work plan in S3. Raises Invalid."""
    config: OperatorSettings = memo.config
    try:
        normalized = normalize_spec(dict(spec))
        if errors := config.limits.output_errors(normalized["targets"]):
            raise SpecError(errors)
    except SpecError as error:
        raise Invalid("InvalidSpec", str(error)) from None
    placement = placement_for(normalized, namespace, name, config)
    try:
        policy.check(normalized, namespace, config.policy, source_bucket=placement.source_bucket,
                     output_bucket=placement.output_bucket, output_prefix=placement.output_prefix)
    except policy.PolicyViolation as error:
        raise Invalid("Forbidden", str(error)) from None
    work = layout.work_prefix(namespace, name, uid)
    try:
        plan = await asyncio.to_thread(ensure_plan, memo.s3, config, work, normalized, placement,
                                       cache_scope(namespace, tenant))
    except PermanentSourceError as error:
        raise Invalid("SourceNotFound", str(error)) from None
    return normalized, placement, plan


async def ensure_job(memo: kopf.Memo, body: Mapping[str, Any]) -> tuple[ShardPlan, Placement, str | None]:
    """Plan the work and create the Job, suspended, owned by the ResizeJob (or adopt the one an earlier attempt
    created). Returns the plan, the placement and the Job's name: None when every image was reused from earlier
    jobs (storage.ensure_plan copied their variants), so there is nothing for a pod to do."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    tenant = (meta.get("labels") or {}).get(TENANT_LABEL)
    normalized, placement, plan = await plan_work(memo, body["spec"], name, namespace, uid, tenant)
    if storage.all_reused(plan):
        return plan, placement, None
    job_name = planning.job_name_for(name)
    job = build_job(name=job_name, namespace=namespace, owner_name=name, spec=normalized, plan=plan,
                    parallelism=1, work_prefix=layout.work_prefix(namespace, name, uid), config=memo.config)
    owner = body if isinstance(body, kopf.Body) else kopf.Body(cast(kopf.RawBody, dict(body)))
    kopf.append_owner_reference(job, owner=owner)  # controller: deleting the ResizeJob deletes the Job
    await asyncio.to_thread(_ensure_job, memo.batch, job)
    return plan, placement, job_name


@metrics.timed
async def start(
    body: kopf.Body, status: kopf.Status, meta: kopf.Meta, patch: kopf.Patch, memo: kopf.Memo,
    logger: kopf.Logger, **_: Any,
) -> None:
    config: OperatorSettings = memo.config
    generation = meta.get("generation", 1)
    if status.get("phase") in TERMINAL_PHASES:
        return
    try:
        plan, placement, job_name = await ensure_job(memo, body)
    except Invalid as error:
        _fail(patch, generation, status, error.reason, str(error))
        post_event(body, "Warning", error.reason, str(error))
        return
    except ApiException:
        raise  # kopf retries
    except Exception as error:
        message = f"cannot prepare the work in S3 ({config.s3_endpoint}): {type(error).__name__}: {error}"
        conditions = planning.set_condition(list(status.get("conditions") or []), "Progressing", "False",
                                            "S3Unavailable", message, generation, planning.timestamp())
        patch.status.update({"phase": "Pending", "observedGeneration": generation, "conditions": conditions})
        raise kopf.TemporaryError(message, delay=10) from error
    memo.scheduler.wake()
    if status.get("phase") in ("Queued", "Running", "Suspended"):  # resumed: the scheduler has it
        return
    # Files refused at upload are part of the job: counted as failed from the start, like any failed image, so
    # the ResizeJob, the API and the CLI give one total and one phase.
    rejected = ResizeJobSpec.from_dict(body["spec"]).source.rejected or ()
    total, now = plan.total + len(rejected), planning.timestamp()
    work = layout.work_prefix(meta["namespace"], meta["name"], meta["uid"])
    counts = {
        "total": total, "succeeded": 0, "failed": len(rejected), "reused": 0, "progress": f"{len(rejected)}/{total}",
        "shards": plan.shards, "shardSize": plan.shard_size, "countedIndexes": "", "startTime": now,
        "failures": [{"source": f.filename, "reason": f"refused at upload: {f.reason}"}
                     for f in rejected[:config.max_status_failures]],
        "results": _results_pointer(config, work, placement),
    }
    if job_name is None:  # every image reused: the job is done without a pod
        phase = planning.final_phase(plan.total, len(rejected), total)
        message = f"all {plan.total} images reused from earlier jobs; {len(rejected)} refused at upload"
        conditions = planning.set_condition(list(status.get("conditions") or []), "Complete", "True", phase,
                                            message, generation, now)
        conditions = planning.set_condition(conditions, "Progressing", "False", phase, message, generation, now)
        patch.status.update({**counts, "phase": phase, "observedGeneration": generation, "conditions": conditions,
                             "succeeded": plan.total, "reused": plan.total, "progress": f"{total}/{total}",
                             "parallelism": 0, "completionTime": now})
        post_event(body, "Normal", phase, message)
        logger.info("finished at once: %s", message)
        return
    message = f"{plan.total} images in {plan.shards} shards of up to {plan.shard_size}; Job {job_name}"
    if plan.reused:
        message += f"; {plan.reused} reused from earlier jobs"
    conditions = planning.set_condition(list(status.get("conditions") or []), "Progressing", "True",
                                        "JobCreated", message, generation, now)
    conditions = planning.set_condition(conditions, "Admitted", "False", "Queued",
                                        "waiting for the scheduler", generation, now)
    patch.status.update({**counts, "phase": "Queued", "observedGeneration": generation, "conditions": conditions,
                         "jobName": job_name, "parallelism": 0})
    post_event(body, "Normal", "JobCreated", message)
    logger.info("planned: %s", message)


def _results_pointer(config: OperatorSettings, work: str, placement: Placement) -> dict[str, str]:
    return {
        "bucket": config.s3_bucket, "prefix": layout.results_prefix(work),
        "outputBucket": placement.output_bucket, "outputPrefix": placement.output_prefix,
    }


@metrics.timed
async def clean_up(body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                   namespace: str | None, uid: str, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """On deletion (the finalizer): stop the pods now, then remove the work files and what spec.cleanup says.
    Idempotent: a retry after a failure removes what is left."""
    assert namespace is not None
    config: OperatorSettings = memo.config
    job_name = status.get("jobName") or planning.job_name_for(name)
    try:  # the garbage collector would delete it only after the finalizer: the pods stop now instead
        await asyncio.to_thread(memo.batch.delete_namespaced_job, job_name, namespace,
                                propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise
    # Stopped pods write a last checkpoint within their grace period: remove the files only once they are gone.
    pods = await asyncio.to_thread(memo.core.list_namespaced_pod, namespace,
                                   label_selector=f"batch.kubernetes.io/job-name={job_name}")
    if pods.items:
        raise kopf.TemporaryError(f"waiting for {len(pods.items)} pods of Job {job_name} to stop", delay=1)
    cleanup = ResizeJobSpec.from_dict(spec).cleanup
    source = (spec.get("source") or {})
    removed = await asyncio.to_thread(
        storage.remove_job_files, memo.s3, config, work=layout.work_prefix(namespace, name, uid),
        outputs=(status.get("results") or {}) if cleanup.outputs == "Delete" else None)
    released: list[str] = []
    if cleanup.originals == "DeleteUnreferenced" and source.get("keys") and \
            (source.get("bucket") or config.s3_bucket) == config.s3_bucket and \
            source.get("prefix", "") == layout.UPLOADS_SOURCE_PREFIX:
        created = planning.parse_timestamp(meta["creationTimestamp"])
        assert created is not None  # the apiserver always sets it
        # The other ResizeJobs from the scheduler's cache of the namespace (complete once seeded by its LIST): no
        # LIST per deletion, which made deleting 500 jobs cost 250,000 object reads.
        if not memo.scheduler.seeded:
            raise kopf.TemporaryError("waiting for the scheduler's view of the namespace", delay=1)
        others = [e.rj for e in memo.scheduler.entries.values() if e.rj["metadata"]["uid"] != uid]
        released = await asyncio.to_thread(
            gc.release, memo.s3, config.s3_bucket, namespace, name,
            [layout.source_object_key(source["prefix"], key) for key in source["keys"]], others, created)
    logger.info("deleted: removed %d work and output objects and %d unreferenced originals", removed,
                len(released))
