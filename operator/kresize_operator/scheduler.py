"""The scheduler: one loop that shares the operator's pod budget among all ResizeJobs and follows their Jobs.

Its state is a cache of the cluster: the ResizeJobs and Jobs of the namespace as their watch events arrive
(kopf's event handlers call `observe_resizejob` / `observe_job`), seeded by one LIST of each before its first
decision. An operator restart therefore rebuilds it from the cluster alone; the counts' inputs live in S3.

A tick, run when an event wakes the loop (a job created, changed, suspended, deleted; a Job's status moved) and
at least every KRESIZE_SCHEDULE_INTERVAL_SECONDS:
1. count the newly finished shards of Jobs that changed (their records in S3) and finish the ResizeJobs whose
   Job finished: the final phase follows the Job's within one tick, with no polling of Jobs;
2. every KRESIZE_PROGRESS_INTERVAL_SECONDS, count the per-image checkpoints of running jobs (progress moves
   image by image) and derive throughput and ETA;
3. delete finished ResizeJobs past their TTL;
4. share the budget (fairshare.share), stage the change so pods that still exist never exceed it
   (fairshare.stage), patch each Job's parallelism and suspend, and each ResizeJob's phase and queue status.
A tick that changes nothing makes no write; reads of quotas and capacity are cached for the capacity interval.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf
from kresize_common import layout
from kresize_common.ranges import compress_ranges, expand_ranges
from kresize_common.records import results_from_json
from kresize_common.s3 import get_json
from kresize_common.spec import GROUP, PLURAL, VERSION
from kubernetes.client.exceptions import ApiException

from . import budget, fairshare, metrics, planning
from .config import OperatorSettings
from .jobs import LABEL_MANAGED_BY, MANAGED_BY
from .storage import shard_records

log = logging.getLogger("kresize.operator.scheduler")

TERMINAL = frozenset({"Succeeded", "PartiallyFailed", "Failed"})
SCHEDULED = frozenset({"Queued", "Running", "Suspended"})  # planned, with a Job: the scheduler's to run
THROUGHPUT_WINDOW_SECONDS = 60.0
QUEUE_HEAD = 5  # queue positions up to this are always current in status
QUEUE_POSITION_REFRESH_SECONDS = 10.0  # further back, a position is rewritten at most this often
DRAIN_SECONDS = 60.0  # longer than a pod's grace period (30 s) plus the Job controller's reaction


def job_finished(job: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """('Complete'|'Failed', reason, message) once the Job controller has finished the Job."""
    for condition in (job.get("status") or {}).get("conditions") or []:
        if condition.get("type") in ("Complete", "Failed") and condition.get("status") == "True":
            return condition["type"], condition.get("reason") or condition["type"], condition.get("message") or ""
    return None


def count_unschedulable(pods: Iterable[Mapping[str, Any]]) -> int:
    """Pods the scheduler has reported it cannot place (PodScheduled False, reason Unschedulable)."""
    return sum(1 for pod in pods if (pod.get("status") or {}).get("phase") == "Pending" and any(
        c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable"
        for c in (pod.get("status") or {}).get("conditions") or []))


@dataclass(eq=False)  # an entry is its ResizeJob: compared by identity, never field by field
class Entry:
    """One ResizeJob as the scheduler last saw it, with its Job."""

    rj: dict[str, Any]
    job: dict[str, Any] | None = None
    job_changed: bool = False  # the Job's status moved since its shards were last counted
    job_lost: bool = False  # the Job was deleted while the ResizeJob still needs it
    checkpointed: dict[str, int] = field(default_factory=dict)  # checkpoint object -> images in it
    samples: collections.deque[tuple[float, int]] = field(default_factory=lambda: collections.deque(maxlen=64))
    progress_at: float = 0.0
    position_at: float = 0.0  # when its queue position was last written
    # After we lower a Job's parallelism (or suspend it), its pods may exist unseen until the Job controller
    # reports on them: count the old parallelism until a Job status newer than our write shows they are gone.
    draining_from: int = 0
    drain_version: int = 0
    drain_deadline: float = 0.0  # a Job whose status never moves (it had no pods) settles after DRAIN_SECONDS

    @property
    def name(self) -> str:
        return self.rj["metadata"]["name"]

    @property
    def status(self) -> dict[str, Any]:
        return self.rj.get("status") or {}

    @property
    def spec(self) -> dict[str, Any]:
        return self.rj.get("spec") or {}

    @property
    def phase(self) -> str:
        return self.status.get("phase") or ""

    @property
    def deleting(self) -> bool:
        return bool(self.rj["metadata"].get("deletionTimestamp"))

    @property
    def log_ref(self) -> dict[str, Any]:
        """`extra` for a log line about this job: kopf's JSON formatter names it under `resizejob`, as it does
        for the handlers' lines."""
        meta = self.rj["metadata"]
        return {"k8s_ref": {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ResizeJob", "name": meta["name"],
                            "uid": meta["uid"], "namespace": meta["namespace"]}}

    @property
    def work(self) -> str:
        meta = self.rj["metadata"]
        return layout.work_prefix(meta["namespace"], meta["name"], meta["uid"])

    def indexes(self) -> tuple[set[int], set[int]]:
        status = (self.job or {}).get("status") or {}
        return (expand_ranges(status.get("completedIndexes")),
                expand_ranges(status.get("failedIndexes")))

    def demand(self) -> int:
        """Pods this job could use now: its unfinished shards, at most spec.parallelism."""
        completed, failed = self.indexes()
        remaining = int(self.status.get("shards") or 0) - len(completed | failed)
        return max(0, min(remaining, int(self.spec.get("parallelism") or 1)))

    def pods(self) -> int:
        """Its pods that exist: active, and terminating (still checkpointing after a scale-down)."""
        status = (self.job or {}).get("status") or {}
        return int(status.get("active") or 0) + int(status.get("terminating") or 0)

    def occupied(self) -> int:
        """The pods this job may hold now: those that exist, or, while a decrease is not confirmed, as many as
        before it."""
        return max(self.pods(), self.draining_from)

    def settle(self) -> None:
        """Forget a decrease once a Job status written after it shows no more pods than the new parallelism."""
        if not self.draining_from:
            return
        confirmed = self.job is not None and _version(self.job) > self.drain_version and \
            self.pods() <= self.job_parallelism()
        if confirmed or time.monotonic() > self.drain_deadline:
            self.draining_from = 0

    def job_parallelism(self) -> int:
        spec = (self.job or {}).get("spec") or {}
        return 0 if spec.get("suspend") else int(spec.get("parallelism") or 0)


class Scheduler:
    def __init__(self, config: OperatorSettings, memo: kopf.Memo,
                 recreate_job: Callable[[dict[str, Any]], Awaitable[object]]) -> None:
        self.config, self.memo, self.recreate_job = config, memo, recreate_job
        self.entries: dict[str, Entry] = {}  # by ResizeJob uid
        self.unattached: dict[str, dict[str, Any]] = {}  # a Job seen before its ResizeJob, by the owner's uid
        self.wakeup = asyncio.Event()
        self.seeded = False
        self._cached: dict[str, tuple[float, int | None]] = {}
        self._unschedulable_cap: tuple[float, int] | None = None

    # -- the watch side ----------------------------------------------------------------------------
    def observe_resizejob(self, body: Mapping[str, Any], event_type: str | None) -> None:
        uid = body["metadata"]["uid"]
        if event_type == "DELETED":
            self.entries.pop(uid, None)
        else:
            entry = self.entries.get(uid)
            if entry is None:
                job = self.unattached.pop(uid, None)
                self.entries[uid] = Entry(dict(body), job, job_changed=job is not None)
            elif _newer(body, entry.rj):
                entry.rj = dict(body)
        self.wake()

    def observe_job(self, body: Mapping[str, Any], event_type: str | None) -> None:
        owners = [o for o in body["metadata"].get("ownerReferences") or [] if o.get("kind") == "ResizeJob"]
        if not owners:
            return
        uid = owners[0]["uid"]
        entry = self.entries.get(uid)
        if entry is None:  # its ResizeJob's event comes later (after a restart, the two watches race)
            if event_type == "DELETED":
                self.unattached.pop(uid, None)
            else:
                self.unattached[uid] = dict(body)
            return
        if event_type == "DELETED":
            entry.job = None
            entry.job_lost = entry.phase in SCHEDULED and not entry.deleting
        elif entry.job is None or _newer(body, entry.job):
            old_status = (entry.job or {}).get("status")
            entry.job = dict(body)
            entry.job_changed = entry.job_changed or old_status != body.get("status")
            entry.settle()
        self.wake()

    def wake(self) -> None:
        self.wakeup.set()

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        await self._seed()
        while True:
            try:
                await asyncio.wait_for(self.wakeup.wait(), timeout=self.config.schedule_interval_seconds)
                await asyncio.sleep(0.02)  # gather a burst of events (500 jobs created at once) into one tick
            except TimeoutError:
                pass
            self.wakeup.clear()
            started = time.perf_counter()
            try:
                await self.tick()
            except Exception as error:  # noqa: BLE001 - the apiserver or S3 away: the next tick tries again
                metrics.RECONCILE_ERRORS.labels("schedule").inc()
                log.warning("scheduling tick failed: %s: %s", type(error).__name__, error)
                await asyncio.sleep(1)
            finally:
                metrics.RECONCILE_SECONDS.labels("schedule").observe(time.perf_counter() - started)

    async def _seed(self) -> None:
        """One LIST of ResizeJobs and of our Jobs before any decision, so the first share sees every pod."""
        while not self.seeded:
            try:
                namespace = self.config.namespace
                rjs = await asyncio.to_thread(self.memo.custom.list_namespaced_custom_object, GROUP, VERSION,
                                              namespace, PLURAL)
                jobs = await asyncio.to_thread(self.memo.batch.list_namespaced_job, namespace,
                                               label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}",
                                               _preload_content=False)  # plain JSON: no model classes
            except Exception as error:  # noqa: BLE001 - not reachable yet
                log.warning("cannot list ResizeJobs and Jobs yet: %s: %s", type(error).__name__, error)
                await asyncio.sleep(2)
                continue
            # Through the watch side, which keeps whatever an event brought meanwhile if it is newer.
            for rj in rjs.get("items", []):
                self.observe_resizejob(rj, None)
            for job in json.loads(jobs.data).get("items", []):
                self.observe_job(job, None)
            self.seeded = True

    async def tick(self) -> None:
        entries = list(self.entries.values())
        await _bounded([self._count(e) for e in entries if e.job_changed and e.job and e.phase in SCHEDULED])
        await _bounded([self.recreate(e) for e in entries if e.job_lost and e.phase in SCHEDULED
                        and not e.deleting])
        await _bounded([self._progress(e) for e in entries if e.phase == "Running" and e.job and e.pods()
                        and time.monotonic() - e.progress_at >= self.config.progress_interval_seconds])
        await _bounded([self._expire(e) for e in entries if e.phase in TERMINAL and not e.deleting])
        await self._schedule([e for e in self.entries.values() if e.phase in SCHEDULED and e.job is not None])

    async def recreate(self, entry: Entry) -> None:
        log.warning("Job %s of ResizeJob %s is gone; recreating it", entry.status.get("jobName"), entry.name,
                    extra=entry.log_ref)
        await self._event(entry, "Warning", "JobRecreated", f"Job {entry.status.get('jobName')} was deleted; "
                                                             "recreating it")
        await self.recreate_job(entry.rj)
        entry.job_lost = False

    # -- 1. counting finished shards, finishing ------------------------------------------------------
    async def _count(self, entry: Entry) -> None:
        entry.job_changed = False
        # One snapshot of the Job for the indexes and the verdict: a newer event may replace entry.job while the
        # records are read, and finishing with its verdict but the older indexes would lose their counts.
        job = entry.job
        assert job is not None
        completed, failed = entry.indexes()
        counts = await asyncio.to_thread(self._collect, entry, completed, failed)
        update: dict[str, Any] = dict(counts)
        done = self._done(entry, counts["succeeded"], counts["failed"], counts["countedIndexes"])
        update["progress"] = f"{done}/{entry.status.get('total') or 0}"
        finished = job_finished(job)
        events: list[tuple[str, str, str]] = []
        if finished is not None:
            events, final = self._final(entry, counts, finished)
            update.update(final)
        await self.patch_status(entry, update)
        for event in events:
            await self._event(entry, *event)

    def _collect(self, entry: Entry, completed: set[int], failed: set[int]) -> dict[str, Any]:
        """Fold the results of newly finished indexes into the counts (blocking S3 reads). The counts and the
        counted indexes change in one status patch, so nothing is counted twice."""
        config, status, job_name = self.config, entry.status, entry.status.get("jobName", "")
        counted = expand_ranges(status.get("countedIndexes"))
        succeeded, failures_count = int(status.get("succeeded") or 0), int(status.get("failed") or 0)
        reused = int(status.get("reused") or 0)
        failures = list(status.get("failures") or [])
        for index in sorted((completed | failed) - counted):
            reason = None
            if index in failed:
                reason = (f"shard {index} failed after its retries with an infrastructure error; "
                          f"see the logs of Job {job_name} index {index}")
            records = shard_records(self.memo.s3, config.s3_bucket, entry.work, index, failed_reason=reason)
            if reason is None:  # the pod's own timings, not a shard failed by the Job controller
                metrics.SHARD_SECONDS.observe(sum(record.seconds for record in records))
            for record in records:
                metrics.IMAGES.labels(record.status).inc()
                if record.seconds:
                    metrics.IMAGE_SECONDS.observe(record.seconds)
                if record.status == "succeeded":
                    succeeded += 1
                    reused += record.reused
                    continue
                failures_count += 1
                if len(failures) < config.max_status_failures:
                    failures.append({"source": record.source, "reason": record.error or "unknown error"})
            counted.add(index)
        return {"succeeded": succeeded, "failed": failures_count, "reused": reused, "failures": failures,
                "countedIndexes": compress_ranges(counted)}

    def _final(self, entry: Entry, counts: dict[str, Any],
               finished: tuple[str, str, str]) -> tuple[list[tuple[str, str, str]], dict[str, Any]]:
        kind, reason, job_message = finished
        total = int(entry.status.get("total") or 0)
        generation = entry.rj["metadata"].get("generation", 1)
        now = planning.timestamp()
        conditions = list(entry.status.get("conditions") or [])
        all_counted = counts["succeeded"] + counts["failed"] >= total
        if kind == "Complete" or (reason == "FailedIndexes" and all_counted):
            phase = planning.final_phase(counts["succeeded"], counts["failed"], total)
        else:
            phase = "Failed"
        job_name = entry.status.get("jobName")
        message = f"{counts['succeeded']} of {total} images succeeded, {counts['failed']} failed"
        if phase == "Failed":
            why = reason if kind == "Failed" else "NoImageSucceeded"
            message = f"{message}; Job {job_name}: {why} {job_message}".strip()
            conditions = planning.set_condition(conditions, "Failed", "True", why, message, generation, now)
            events = [("Warning", "Failed", message)]
        else:
            conditions = planning.set_condition(conditions, "Complete", "True", phase, message, generation, now)
            events = [("Normal", phase, message)]
        conditions = planning.set_condition(conditions, "Progressing", "False", phase, message, generation, now)
        log.info("%s finished: %s", entry.name, message, extra=entry.log_ref)
        return events, {"phase": phase, "conditions": conditions, "completionTime": now, "parallelism": 0,
                "queuePosition": None, "estimatedCompletionTime": None,
                "progress": f"{counts['succeeded'] + counts['failed']}/{total}"}

    # -- 2. progress image by image ------------------------------------------------------------------
    def _done(self, entry: Entry, succeeded: int, failed: int, counted_indexes: str | None) -> int:
        """Images done: those of counted indexes, and those checkpointed by indexes not counted yet."""
        counted = expand_ranges(counted_indexes)
        inflight = sum(n for key, n in entry.checkpointed.items() if _checkpoint_index(entry.work, key) not in counted)
        return min(int(entry.status.get("total") or 0), succeeded + failed + inflight)

    async def _progress(self, entry: Entry) -> None:
        entry.progress_at = time.monotonic()
        await asyncio.to_thread(self._read_checkpoints, entry)
        status = entry.status
        total = int(status.get("total") or 0)
        done = self._done(entry, int(status.get("succeeded") or 0), int(status.get("failed") or 0),
                          status.get("countedIndexes"))
        now = time.monotonic()
        entry.samples.append((now, done))
        while entry.samples and now - entry.samples[0][0] > THROUGHPUT_WINDOW_SECONDS:
            entry.samples.popleft()
        rate = planning.throughput(list(entry.samples))
        update: dict[str, Any] = {"progress": f"{done}/{total}"}
        if rate is not None:
            update["imagesPerSecond"] = round(rate, 2)
            eta = None
            if rate > 0:
                seconds = (total - done) / rate
                eta = planning.timestamp(datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=seconds))
            update["estimatedCompletionTime"] = eta
        await self.patch_status(entry, update)

    def _read_checkpoints(self, entry: Entry) -> None:
        prefix = f"{entry.work}checkpoints/"
        for obj in self.memo.s3.list_objects(self.config.s3_bucket, prefix=prefix, recursive=True):
            if obj.object_name and obj.object_name not in entry.checkpointed:
                entry.checkpointed[obj.object_name] = len(results_from_json(
                    get_json(self.memo.s3, self.config.s3_bucket, obj.object_name)))

    # -- 3. TTL --------------------------------------------------------------------------------------
    async def _expire(self, entry: Entry) -> None:
        ttl = entry.spec.get("ttlSecondsAfterFinished")
        ttl = self.config.ttl_seconds_after_finished if ttl is None else ttl
        finished_at = planning.parse_timestamp(entry.status.get("completionTime"))
        if ttl is None or finished_at is None:
            return
        if datetime.datetime.now(datetime.UTC) < finished_at + datetime.timedelta(seconds=ttl):
            return
        log.info("%s finished at %s; deleting it after its TTL of %ss", entry.name, finished_at, ttl,
                 extra=entry.log_ref)
        try:
            await asyncio.to_thread(self.memo.custom.delete_namespaced_custom_object, GROUP, VERSION,
                                    entry.rj["metadata"]["namespace"], PLURAL, entry.name)
        except ApiException as error:
            if error.status != 404:
                raise
        # As the apiserver has marked it (its finalizer runs next), until the watch event says so too.
        entry.rj["metadata"]["deletionTimestamp"] = planning.timestamp()

    # -- 4. sharing the budget -----------------------------------------------------------------------
    async def _schedule(self, entries: list[Entry]) -> None:
        for entry in entries:
            entry.settle()
        held = [e for e in entries if e.deleting or e.spec.get("suspend")]
        free = [e for e in entries if not (e.deleting or e.spec.get("suspend"))]
        demands = {e: e.demand() for e in free if job_finished(e.job or {}) is None}
        runnable = [e for e, demand in demands.items() if demand > 0]
        # Jobs with nothing left to start (finishing) keep the pods they have; the rest share what is left.
        finishing = [e for e in free if not demands.get(e)]
        in_use = sum(e.occupied() for e in self.entries.values() if e.job is not None)
        if not runnable and not held:
            self._publish(0, in_use, None)
            return
        total_budget = await self.pod_budget(in_use)
        available = max(0, total_budget - sum(e.occupied() for e in finishing))
        shares = fairshare.share(available, [
            fairshare.Demand(e.name, demands[e], int(e.spec.get("priority") or 1),
                             _created(e)) for e in runnable])
        targets = dict(shares.pods)
        staged = fairshare.stage(
            targets, {e.name: e.job_parallelism() for e in [*runnable, *held]},
            {e.name: e.occupied() for e in [*runnable, *held]}, available)
        self._publish(len(shares.queued), in_use, total_budget)
        positions = {name: position for position, name in enumerate(shares.queued, start=1)}
        writes = []
        for entry in [*runnable, *held]:
            writes.append(self._apply(entry, staged.get(entry.name, 0), entry.name in targets,
                                      positions.get(entry.name), len(shares.queued), total_budget))
        await _bounded(writes)

    def _publish(self, queued: int, in_use: int, total_budget: int | None) -> None:
        metrics.QUEUE_LENGTH.set(queued)
        metrics.PODS_IN_USE.set(in_use)
        if total_budget is not None:
            metrics.POD_BUDGET.set(total_budget)

    async def _apply(self, entry: Entry, pods: int, admitted: bool, position: int | None, queued: int,
                     total_budget: int) -> None:
        job = entry.job or {}
        spec = job.get("spec") or {}
        before = entry.job_parallelism()
        if pods == 0 and not spec.get("suspend"):
            await self._patch_job(entry, {"spec": {"suspend": True}})
        elif pods > 0 and (spec.get("suspend") or spec.get("parallelism") != pods):
            await self._patch_job(entry, {"spec": {"suspend": False, "parallelism": pods}})
        if pods < before:
            entry.draining_from = max(entry.draining_from, before, entry.pods())
            entry.drain_version = _version(entry.job or {})
            entry.drain_deadline = time.monotonic() + DRAIN_SECONDS
        if entry.deleting:
            return
        if position is not None and entry.phase == "Queued" and position > QUEUE_HEAD and \
                time.monotonic() - entry.position_at < QUEUE_POSITION_REFRESH_SECONDS:
            return  # each admission moves every queued job up one: deep in the queue, say so less often
        generation = entry.rj["metadata"].get("generation", 1)
        now = planning.timestamp()
        conditions = list(entry.status.get("conditions") or [])
        suspended = bool(entry.spec.get("suspend"))
        if suspended:
            phase, reason, message = "Suspended", "Suspended", "spec.suspend is true: the job holds no pods"
        elif admitted:
            phase, reason, message = "Running", "Admitted", f"{pods} pods of a budget of {total_budget}"
        else:
            phase, reason = "Queued", "Queued"
            message = (f"waiting for a pod: position {position} of {queued} in the queue; all {total_budget} "
                       f"pods of the budget are in use")
        conditions = planning.set_condition(conditions, "Admitted", "True" if phase == "Running" else "False",
                                            reason, message, generation, now)
        if suspended or any(c.get("type") == "Suspended" for c in conditions):
            conditions = planning.set_condition(
                conditions, "Suspended", "True" if suspended else "False", "Suspended" if suspended else "Resumed",
                "spec.suspend is true" if suspended else "spec.suspend is false", generation, now)
        update = {"phase": phase, "parallelism": pods, "queuePosition": position, "conditions": conditions,
                  "observedGeneration": generation}
        if phase != "Running":
            update.update({"imagesPerSecond": None, "estimatedCompletionTime": None})
            entry.samples.clear()
        # The start handler sets Queued before the scheduler has placed the job: its first position is news too.
        changed_phase = phase != entry.phase or (position is not None and entry.status.get("queuePosition") is None)
        if position != entry.status.get("queuePosition"):
            entry.position_at = time.monotonic()
        await self.patch_status(entry, update)
        if changed_phase:
            log.info("%s is %s: %s", entry.name, phase, message, extra=entry.log_ref)
            await self._event(entry, "Normal", phase, message)

    async def pod_budget(self, in_use: int) -> int:
        """The smallest of KRESIZE_MAX_PODS, the quota headroom, free cluster capacity (when enabled) and the
        cap held while pods stay unschedulable."""
        config = self.config
        size = config.budget_pod_size
        quota = cluster = None
        if config.quota_aware:
            quota = await self._cached_read("quota", lambda: budget.quota_headroom(
                self._list_quotas(), size, in_use))
        if config.cluster_capacity:
            cluster = await self._cached_read("cluster", lambda: self._cluster_free(size))
        cap = await self._unschedulable(in_use)
        return budget.pod_budget(config.max_pods, quota=quota, cluster=cluster, unschedulable_cap=cap)

    async def _cached_read(self, what: str, read: Callable[[], int | None]) -> int | None:
        at, value = self._cached.get(what, (0.0, None))
        if time.monotonic() - at >= self.config.capacity_interval_seconds:
            try:
                value = await asyncio.to_thread(read)
            except ApiException as error:
                log.warning("cannot read the %s for the pod budget (%s %s); not using it", what, error.status,
                            error.reason)
                value = None
            self._cached[what] = (time.monotonic(), value)
        return value

    def _list_quotas(self) -> list[dict[str, Any]]:
        quotas = self.memo.core.list_namespaced_resource_quota(self.config.namespace)
        return [self.memo.core.api_client.sanitize_for_serialization(q) for q in quotas.items]

    def _cluster_free(self, size: budget.PodSize) -> int:
        api = self.memo.core.api_client
        nodes = [api.sanitize_for_serialization(n) for n in self.memo.core.list_node().items]
        pods = [api.sanitize_for_serialization(p) for p in self.memo.core.list_pod_for_all_namespaces(
            field_selector="status.phase!=Succeeded,status.phase!=Failed").items]
        return budget.node_free_pods(nodes, pods, size, _is_ours)

    async def _unschedulable(self, in_use: int) -> int | None:
        """While our pods stay Pending unschedulable, the budget is what was placed; it is held for the backoff,
        then lifted, and the next unschedulable pod lowers it again."""
        now = time.monotonic()
        if self._unschedulable_cap and now < self._unschedulable_cap[0]:
            return self._unschedulable_cap[1]
        self._unschedulable_cap = None
        waiting = any(int(((e.job or {}).get("status") or {}).get("active") or 0)
                      > int(((e.job or {}).get("status") or {}).get("ready") or 0) for e in self.entries.values())
        if not waiting:  # every pod is running: nothing to look at (an idle tick reads nothing)
            return None
        try:
            pods = await asyncio.to_thread(self.memo.core.list_namespaced_pod, self.config.namespace,
                                           label_selector=f"{LABEL_MANAGED_BY}={MANAGED_BY}")
        except ApiException as error:
            log.warning("cannot list resizer pods (%s %s)", error.status, error.reason)
            return None
        stuck = count_unschedulable(self.memo.core.api_client.sanitize_for_serialization(p) for p in pods.items)
        if not stuck:
            return None
        cap = max(1, in_use - stuck)
        log.warning("%d resizer pods cannot be scheduled; holding the pod budget at %d for %ss", stuck, cap,
                    self.config.unschedulable_backoff_seconds)
        self._unschedulable_cap = (now + self.config.unschedulable_backoff_seconds, cap)
        return cap

    # -- writes --------------------------------------------------------------------------------------
    async def _event(self, entry: Entry, type_: str, reason: str, message: str) -> None:
        try:
            await asyncio.to_thread(self.memo.core.create_namespaced_event, entry.rj["metadata"]["namespace"],
                                    event_for(entry.rj, type_, reason, message))
        except ApiException as error:  # an Event is worth a log line, never a failed tick
            log.warning("cannot post Event %s on %s: %s %s", reason, entry.name, error.status, error.reason,
                        extra=entry.log_ref)

    async def _patch_job(self, entry: Entry, patch: dict[str, Any]) -> None:
        name, namespace = entry.status["jobName"], entry.rj["metadata"]["namespace"]
        try:
            response = await asyncio.to_thread(self.memo.batch.patch_namespaced_job, name, namespace, patch,
                                               _preload_content=False)  # plain JSON: no model classes
        except ApiException as error:
            if error.status == 404:
                return  # deleted meanwhile: its DELETED event follows
            raise
        entry.job = json.loads(response.data)

    async def patch_status(self, entry: Entry, update: dict[str, Any]) -> None:
        """Merge-patch the ResizeJob's status with what differs from the cached object, if anything."""
        status = entry.status
        changed = {k: v for k, v in update.items() if status.get(k) != v}
        if not changed:
            return
        meta = entry.rj["metadata"]
        try:
            entry.rj = await asyncio.to_thread(
                self.memo.custom.patch_namespaced_custom_object_status, GROUP, VERSION, meta["namespace"], PLURAL,
                meta["name"], {"status": changed})
        except ApiException as error:
            if error.status != 404:
                raise


def event_for(rj: Mapping[str, Any], type_: str, reason: str, message: str) -> dict[str, Any]:
    """A core/v1 Event on the ResizeJob (what `kubectl describe rj` shows), as kopf's poster writes them: the
    scheduler runs outside kopf's handlers, where kopf.event() has no queue."""
    meta = rj["metadata"]
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {"apiVersion": rj.get("apiVersion", f"{GROUP}/{VERSION}"),
                           "kind": rj.get("kind", "ResizeJob"), "name": meta["name"],
                           "namespace": meta["namespace"], "uid": meta["uid"]},
        "type": type_, "reason": reason, "message": message[:1024], "count": 1,
        "firstTimestamp": now, "lastTimestamp": now, "source": {"component": MANAGED_BY},
        "reportingComponent": MANAGED_BY,
    }


def _version(obj: Mapping[str, Any]) -> int:
    try:
        return int(obj["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):  # opaque versions: no ordering, so the next status settles it
        return 0


def _newer(new: Mapping[str, Any], old: Mapping[str, Any]) -> bool:
    """Whether `new` is a later version than `old`: a watch event may arrive after the answer to our own write,
    and must not bring back the older status (the counts would be counted twice)."""
    try:
        return int(new["metadata"]["resourceVersion"]) >= int(old["metadata"]["resourceVersion"])
    except (KeyError, TypeError, ValueError):  # opaque versions: trust the order of arrival
        return True


def _is_ours(pod: Mapping[str, Any]) -> bool:
    return ((pod.get("metadata") or {}).get("labels") or {}).get(LABEL_MANAGED_BY) == MANAGED_BY


def _created(entry: Entry) -> float:
    created = planning.parse_timestamp(entry.rj["metadata"].get("creationTimestamp"))
    return created.timestamp() if created else 0.0


def _checkpoint_index(work: str, key: str) -> int:
    """`<work>checkpoints/00003/00001.json` -> 3."""
    return int(key[len(work):].split("/")[1])


async def _bounded(calls: Sequence[Awaitable[None]], limit: int = 16) -> None:
    """Run the calls concurrently, at most `limit` at a time (they each hold a thread of the default pool)."""
    if not calls:
        return
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[None]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(call) for call in calls))
