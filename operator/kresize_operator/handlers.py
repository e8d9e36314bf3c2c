"""kopf handlers: the I/O edge of the operator. Decisions live in planning.py, manifests in jobs.py.

- create/resume: validate, write the work plan to S3, create the Indexed Job (adopting it when it
  already exists), mark the ResizeJob Running. Every step is idempotent, so a restart at any point
  converges without a second Job.
- a timer on Running jobs: read the Job status, count newly finished indexes from their S3 results
  (counts and the counted indexes change in one status patch, so nothing is counted twice), lower
  parallelism as work runs out, and finish the ResizeJob when the Job finishes.

The configuration is read and validated at start-up (`__main__`), handed to `register()` (intervals) and to
the handlers through kopf's memo (`memo.config`); nothing here reads the environment.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any, cast

import kopf
import kubernetes
from kresize_common import layout
from kresize_common.kube import kube_client
from kresize_common.resizejob import ResizeJobSpec
from kresize_common.s3 import make_client
from kresize_common.spec import GROUP, PLURAL, VERSION, SpecError, normalize_spec
from kubernetes.client.exceptions import ApiException

from . import gc, metrics, planning, policy
from .config import OperatorSettings
from .jobs import build_job
from .storage import PermanentSourceError, Placement, ensure_plan, placement_for, shard_records

TERMINAL_PHASES = frozenset({"Succeeded", "PartiallyFailed", "Failed"})


def register(registry: kopf.OperatorRegistry, config: OperatorSettings) -> None:
    """Every handler of the operator, on `registry`; the timer's interval comes from `config`."""
    kopf.on.login(registry=registry)(kopf.login_via_client)  # a fresh registry has no login of its own
    kopf.on.startup(registry=registry)(configure)
    kopf.on.startup(registry=registry)(start_collecting)
    kopf.on.cleanup(registry=registry)(stop_collecting)
    kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)(start)
    kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)(start)
    kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)(count_phases)
    kopf.timer(GROUP, VERSION, PLURAL, interval=config.sync_interval_seconds, when=_is_running,
               registry=registry)(sync)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # The schema prunes unknown status fields, so kopf keeps its bookkeeping in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration")
    # Only kopf's warnings become Events automatically (a timer's "succeeded" every few seconds would flood
    # the namespace); the lifecycle Events (JobCreated, Succeeded, ...) are posted with kopf.event().
    settings.posting.level = logging.WARNING
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


async def start_collecting(memo: kopf.Memo, **_: Any) -> None:
    if memo.config.gc_interval_seconds:
        memo.gc_task = asyncio.create_task(collect_orphans_forever(memo), name="kresize-gc")


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


async def stop_collecting(memo: kopf.Memo, **_: Any) -> None:
    task = memo.get("gc_task")
    if task is not None:
        task.cancel()


def post_event(body: kopf.Body, type_: str, reason: str, message: str) -> None:
    """An Event on the ResizeJob (what `kubectl describe rj` shows), queued by kopf's poster."""
    kopf.event(body, type=type_, reason=reason, message=message[:1024])


async def count_phases(body: kopf.Body, uid: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
    """Keeps the ResizeJobs-by-phase and pods-in-use gauges true as watch events arrive."""
    memo.census.update(uid, None if type == "DELETED" else body)


def _is_running(status: kopf.Status, **_: Any) -> bool:
    return status.get("phase") == "Running"


def _fail(patch: kopf.Patch, generation: int, status: kopf.Status, reason: str, message: str) -> None:
    conditions = list(status.get("conditions") or [])
    now = _now()
    conditions = planning.set_condition(conditions, "Progressing", "False", reason, message, generation, now)
    conditions = planning.set_condition(conditions, "Failed", "True", reason, message, generation, now)
    patch.status.update({
        "phase": "Failed", "observedGeneration": generation, "conditions": conditions, "completionTime": now,
    })


def _ensure_job(batch: kubernetes.client.BatchV1Api, job: dict[str, Any]) -> dict[str, Any]:
    """Create the Job, or adopt the one an earlier attempt created (same deterministic name)."""
    meta = job["metadata"]
    try:
        # The client takes a plain dict as readily as a V1Job (it serialises either).
        return batch.create_namespaced_job(meta["namespace"], cast(Any, job)).to_dict()
    except ApiException as error:
        if error.status != 409:
            raise
    existing = batch.read_namespaced_job(meta["name"], meta["namespace"]).to_dict()
    owners = (existing.get("metadata") or {}).get("owner_references") or []
    if not any(o.get("uid") == meta["ownerReferences"][0]["uid"] for o in owners):
        raise kopf.PermanentError(f"a Job named {meta['name']} exists and is not owned by this ResizeJob")
    return existing


@metrics.timed
async def start(
    body: kopf.Body, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str, namespace: str | None,
    uid: str, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any,
) -> None:
    config: OperatorSettings = memo.config
    assert namespace is not None  # ResizeJobs are namespaced
    generation = meta.get("generation", 1)
    if status.get("phase") in TERMINAL_PHASES:
        return
    try:
        normalized = normalize_spec(dict(spec))
        if errors := config.limits.output_errors(normalized["targets"]):
            raise SpecError(errors)
    except SpecError as error:
        _fail(patch, generation, status, "InvalidSpec", str(error))
        post_event(body, "Warning", "InvalidSpec", str(error))
        return
    work = layout.work_prefix(namespace, name, uid)
    placement = placement_for(normalized, namespace, name, config)
    try:
        policy.check(normalized, namespace, config.policy, source_bucket=placement.source_bucket,
                     output_bucket=placement.output_bucket, output_prefix=placement.output_prefix)
    except policy.PolicyViolation as error:
        _fail(patch, generation, status, "Forbidden", str(error))
        post_event(body, "Warning", "Forbidden", str(error))
        return
    try:
        plan = await asyncio.to_thread(ensure_plan, memo.s3, config, work, normalized, placement)
    except PermanentSourceError as error:
        _fail(patch, generation, status, "SourceNotFound", str(error))
        post_event(body, "Warning", "SourceNotFound", str(error))
        return
    except Exception as error:
        message = f"cannot prepare the work in S3 ({config.s3_endpoint}): {type(error).__name__}: {error}"
        conditions = planning.set_condition(list(status.get("conditions") or []), "Progressing", "False",
                                            "S3Unavailable", message, generation, _now())
        patch.status.update({"phase": "Pending", "observedGeneration": generation, "conditions": conditions})
        raise kopf.TemporaryError(message, delay=10) from error

    job_name = planning.job_name_for(name)
    parallelism = planning.decide_parallelism(plan.shards, normalized["parallelism"], config.max_parallelism)
    job = build_job(
        name=job_name, namespace=namespace, owner_name=name, spec=normalized, plan=plan,
        parallelism=parallelism, work_prefix=work, config=config,
    )
    kopf.append_owner_reference(job, owner=body)  # controller: deleting the ResizeJob deletes the Job
    await asyncio.to_thread(_ensure_job, memo.batch, job)
    if status.get("phase") == "Running":  # resumed: the counts in status stay as they are
        return
    message = f"{plan.total} images in {plan.shards} shards of up to {plan.shard_size}; Job {job_name}"
    conditions = planning.set_condition(list(status.get("conditions") or []), "Progressing", "True",
                                        "JobCreated", message, generation, _now())
    patch.status.update({
        "phase": "Running", "observedGeneration": generation, "conditions": conditions,
        "total": plan.total, "succeeded": 0, "failed": 0, "progress": f"0/{plan.total}",
        "shards": plan.shards, "shardSize": plan.shard_size, "countedIndexes": "",
        "jobName": job_name, "parallelism": parallelism, "startTime": _now(), "failures": [],
        "results": _results_pointer(config, work, placement),
    })
    post_event(body, "Normal", "JobCreated", message)
    logger.info("started: %s", message)


def _results_pointer(config: OperatorSettings, work: str, placement: Placement) -> dict[str, str]:
    return {
        "bucket": config.s3_bucket, "prefix": layout.results_prefix(work),
        "outputBucket": placement.output_bucket, "outputPrefix": placement.output_prefix,
    }


def _job_finished(job: dict[str, Any]) -> tuple[str, str, str] | None:
    """('Complete'|'Failed', reason, message) once the Job controller has finished the Job."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("reason") or condition["type"], condition.get("message") or ""
    return None


def _collect(
    memo: kopf.Memo, work: str, status: kopf.Status, completed: set[int], failed: set[int], job_name: str,
) -> dict[str, Any]:
    """Fold the results of newly finished indexes into the counts (blocking S3 reads)."""
    config: OperatorSettings = memo.config
    counted = planning.expand_ranges(status.get("countedIndexes"))
    succeeded, failures_count = status.get("succeeded", 0), status.get("failed", 0)
    failures = list(status.get("failures") or [])
    for index in sorted((completed | failed) - counted):
        reason = None
        if index in failed:
            reason = (f"shard {index} failed after its retries with an infrastructure error; "
                      f"see the logs of Job {job_name} index {index}")
        records = shard_records(memo.s3, config.s3_bucket, work, index, failed_reason=reason)
        if reason is None:  # the pod's own timings, not a shard failed by the Job controller
            metrics.SHARD_SECONDS.observe(sum(record.seconds for record in records))
        for record in records:
            metrics.IMAGES.labels(record.status).inc()
            if record.seconds:
                metrics.IMAGE_SECONDS.observe(record.seconds)
            if record.status == "succeeded":
                succeeded += 1
                continue
            failures_count += 1
            if len(failures) < config.max_status_failures:
                failures.append({"source": record.source, "reason": record.error or "unknown error"})
        counted.add(index)
    return {"succeeded": succeeded, "failed": failures_count, "failures": failures,
            "countedIndexes": planning.compress_ranges(counted)}


@metrics.timed
async def sync(
    body: kopf.Body, status: kopf.Status, spec: kopf.Spec, meta: kopf.Meta, name: str, namespace: str | None,
    uid: str, patch: kopf.Patch, memo: kopf.Memo, logger: kopf.Logger, **_: Any,
) -> None:
    assert namespace is not None  # ResizeJobs are namespaced
    generation = meta.get("generation", 1)
    job_name = status["jobName"]
    try:
        job = (await asyncio.to_thread(memo.batch.read_namespaced_job, job_name, namespace)).to_dict()
    except ApiException as error:
        if error.status != 404:
            raise
        # Someone deleted the Job: create it again. Finished shards skip themselves (their results exist).
        logger.warning("Job %s is gone; recreating it", job_name)
        post_event(body, "Warning", "JobRecreated", f"Job {job_name} was deleted; recreating it")
        await start(body=body, spec=spec, status=status, meta=meta, name=name, namespace=namespace, uid=uid,
                    patch=patch, memo=memo, logger=logger)
        return

    job_status = job.get("status") or {}
    completed = planning.expand_ranges(job_status.get("completed_indexes"))
    failed_indexes = planning.expand_ranges(job_status.get("failed_indexes"))
    work = layout.work_prefix(namespace, name, uid)
    counts = await asyncio.to_thread(_collect, memo, work, status, completed, failed_indexes, job_name)
    total = status.get("total", 0)
    done = counts["succeeded"] + counts["failed"]
    update: dict[str, Any] = {**counts, "progress": f"{done}/{total}", "observedGeneration": generation}

    finished = _job_finished(job)
    if finished is None:
        remaining = status.get("shards", 0) - len(completed | failed_indexes)
        cap = ResizeJobSpec.from_dict(spec).parallelism  # as stored: the CRD's default applied
        desired = planning.decide_parallelism(remaining, cap, memo.config.max_parallelism)
        if desired < (job.get("spec") or {}).get("parallelism", 0):
            await asyncio.to_thread(memo.batch.patch_namespaced_job, job_name, namespace,
                                    {"spec": {"parallelism": desired}})
            logger.info("parallelism lowered to %d (%d shards remain)", desired, remaining)
        update["parallelism"] = min(desired, (job.get("spec") or {}).get("parallelism", desired))
        patch.status.update(update)
        return

    kind, reason, job_message = finished
    now = _now()
    conditions = list(status.get("conditions") or [])
    all_counted = done >= total
    if kind == "Complete" or (reason == "FailedIndexes" and all_counted):
        phase = planning.final_phase(counts["succeeded"], counts["failed"], total)
    else:
        phase = "Failed"
    message = f"{counts['succeeded']} of {total} images succeeded, {counts['failed']} failed"
    if phase == "Failed":
        why = reason if kind == "Failed" else "NoImageSucceeded"
        message = f"{message}; Job {job_name}: {why} {job_message}".strip()
        conditions = planning.set_condition(conditions, "Failed", "True", why, message, generation, now)
        post_event(body, "Warning", "Failed", message)
    else:
        conditions = planning.set_condition(conditions, "Complete", "True", phase, message, generation, now)
        post_event(body, "Normal", phase, message)
    conditions = planning.set_condition(conditions, "Progressing", "False", phase, message, generation, now)
    update.update({"phase": phase, "conditions": conditions, "completionTime": now, "parallelism": 0})
    patch.status.update(update)
    logger.info("finished: %s", message)
