"""A stand-in for the batch/v1 Job controller and the kubelet, for Indexed Jobs, with no cluster.

It watches Jobs through the (emulated) apiserver and runs each completion index as a local process
playing the pod: the container's command (or the image's entrypoint) and args, with the env a pod would
get (`value`, `secretKeyRef` read from the Secret, the completion-index fieldRef, and JOB_COMPLETION_INDEX),
under the pod's container rules (uid 65532 without a passwd entry, read-only root, only /tmp writable).
It honours parallelism (re-read on every pass), suspend, completions, backoffLimitPerIndex, backoffLimit,
maxFailedIndexes and activeDeadlineSeconds, and writes Job status through the status subresource the way
batch/v1 does: startTime, active, ready, terminating, succeeded, failed, completedIndexes/failedIndexes as
ranges, and SuccessCriteriaMet+Complete or FailureTarget+Failed conditions with their reasons.

As the real controller does, lowering parallelism below the running count, or suspending the Job, deletes
the excess pods (highest indexes first): the kubelet sends SIGTERM, the pod counts as terminating (not active)
until it exits, and its index is not started again before then (podReplacementPolicy: Failed).

Each process has its Pod object in the apiserver (the template's labels, `batch.kubernetes.io/job-name`, phase
Running, Ready), so what lists pods sees them: a deleted pod keeps a deletionTimestamp (a finalizer holds it)
until its process has exited, as a terminating pod does.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes

from .pods import INDEX_ANNOTATION, resolve_env, secret_reader
from .sandbox import IMAGE_ENV, pod_argv, terminate

DEFAULT_ENTRYPOINTS = {"": ["kresize-resizer"]}  # image prefix -> entrypoint; "" matches any image
POD_FINALIZER = "harness.kresize.dev/process"  # held until the pod's process has exited


def compress(indexes: set[int]) -> str:
    parts, ordered = [], sorted(indexes)
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}-{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def _ignored(spec: Any, code: int) -> bool:
    """Whether the Job's podFailurePolicy ignores a pod that exited with `code` (onExitCodes rules, In)."""
    policy = spec.pod_failure_policy
    for rule in (policy.rules if policy else None) or []:
        codes = rule.on_exit_codes
        if codes is not None and codes.operator == "In" and code in (codes.values or []):
            return rule.action == "Ignore"
    return False


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class _JobState:
    name: str
    started: float = field(default_factory=time.monotonic)
    start_time: str = field(default_factory=_now)
    running: dict[int, subprocess.Popen] = field(default_factory=dict)
    terminating: dict[int, subprocess.Popen] = field(default_factory=dict)
    completed: set[int] = field(default_factory=set)
    failed_indexes: set[int] = field(default_factory=set)
    failures: collections.Counter = field(default_factory=collections.Counter)
    failed_pods: int = 0
    ignored: collections.Counter = field(default_factory=collections.Counter)
    finished: bool = False
    last_status: dict[str, Any] | None = None


class JobRunner:
    def __init__(self, kubeconfig: Path, namespace: str, log_dir: Path, entrypoints: dict[str, list[str]] | None = None,
                 interval: float = 0.2):
        self.api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
        self.batch = kubernetes.client.BatchV1Api(self.api)
        self.core = kubernetes.client.CoreV1Api(self.api)
        self.namespace = namespace
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.entrypoints = entrypoints or DEFAULT_ENTRYPOINTS
        self.interval = interval
        self.started: collections.Counter[tuple[str, int]] = collections.Counter()
        self.max_running: collections.Counter[str] = collections.Counter()
        self.max_pods_total = 0  # the most pods (active and terminating, all Jobs) that ever existed at once
        self.stopped: collections.Counter[str] = collections.Counter()  # pods deleted by scale-down or suspend
        self._jobs: dict[str, _JobState] = {}
        self._held: set[tuple[str, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="job-runner", daemon=True)
        self.errors: list[str] = []

    def start(self) -> JobRunner:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        with self._lock:
            for state in self._jobs.values():
                for proc in [*state.running.values(), *state.terminating.values()]:
                    self._kill(proc)
                    self._pod_gone(proc)

    def pods(self) -> int:
        """Pods that exist now, active or terminating, over all Jobs."""
        with self._lock:
            return sum(len(s.running) + len(s.terminating) for s in self._jobs.values())

    def hold(self, job_name: str, index: int) -> None:
        """Do not start this index (like a pod that cannot be scheduled) until release()."""
        self._held.add((job_name, index))

    def release(self, job_name: str, index: int) -> None:
        self._held.discard((job_name, index))

    def kill_index(self, job_name: str, index: int) -> bool:
        """SIGKILL the process of a running index, as when a pod is deleted; the index is then retried."""
        with self._lock:
            for state in self._jobs.values():
                if state.name == job_name and index in state.running:
                    self._kill(state.running[index])
                    return True
        return False

    def terminate_index(self, job_name: str, index: int) -> bool:
        """SIGTERM the pod of a running index, as the kubelet does when a scale-down or a deletion removes it."""
        with self._lock:
            for state in self._jobs.values():
                if state.name == job_name and index in state.running:
                    with contextlib.suppress(OSError, IndexError):
                        terminate(state.running[index].pid)
                    return True
        return False

    def ignored(self, job_name: str) -> int:
        """Pod exits the Job's podFailurePolicy ignored (not counted as failures)."""
        with self._lock:
            return sum(sum(s.ignored.values()) for s in self._jobs.values() if s.name == job_name)

    def running(self, job_name: str) -> list[int]:
        with self._lock:
            return sorted(i for s in self._jobs.values() if s.name == job_name for i in s.running)

    def logs(self, job_name: str, index: int) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob(f"{job_name}-{index}-*.log")))

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._pass()
            except Exception as error:  # noqa: BLE001 - keep playing the controller; record for debugging
                self.errors.append(f"{type(error).__name__}: {error}")
            self._stop.wait(self.interval)

    def _pass(self) -> None:
        jobs = self.batch.list_namespaced_job(self.namespace).items
        seen = set()
        with self._lock:
            for job in jobs:
                if job.spec.completion_mode != "Indexed":
                    continue
                seen.add(job.metadata.uid)
                state = self._jobs.setdefault(job.metadata.uid, _JobState(job.metadata.name))
                if not state.finished:
                    self._step(job, state)
            for uid in set(self._jobs) - seen:  # deleted Jobs: their pods are deleted too (SIGTERM)
                state = self._jobs[uid]
                for index in list(state.running):
                    self._delete_pod(state, index)
                state.finished = True
                self._reap(state)
                if not state.terminating:
                    del self._jobs[uid]
            self.max_pods_total = max(self.max_pods_total, sum(len(s.running) + len(s.terminating)
                                                               for s in self._jobs.values()))

    def _delete_pod(self, state: _JobState, index: int) -> None:
        """What deleting a pod does: SIGTERM now; it stays terminating until it exits."""
        proc = state.running.pop(index)
        with contextlib.suppress(OSError, IndexError):
            terminate(proc.pid)
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.delete_namespaced_pod(proc.pod_name, self.namespace)  # type: ignore[attr-defined]
        state.terminating[index] = proc
        self.stopped[state.name] += 1

    def _exited(self, pods: dict[int, subprocess.Popen]) -> list[tuple[int, int]]:
        """(index, exit code) of the pods among `pods` whose process has exited; they leave `pods`."""
        exited = []
        for index, proc in list(pods.items()):
            code = proc.poll()
            if code is not None:
                del pods[index]
                self._pod_gone(proc)
                exited.append((index, code))
        return exited

    def _reap(self, state: _JobState) -> None:
        for index, code in self._exited(state.terminating):
            if code == 0:
                state.completed.add(index)  # it finished its shard before it saw the SIGTERM
            else:
                state.ignored[index] += 1  # stopped (143, or killed): the pod failure policy ignores it

    def _step(self, job: Any, state: _JobState) -> None:
        spec = job.spec
        completions = spec.completions or 1
        per_index = spec.backoff_limit_per_index
        self._reap(state)
        for index, code in self._exited(state.running):
            if code == 0:
                state.completed.add(index)
                continue
            if _ignored(spec, code):  # podFailurePolicy Ignore: not a failure, the index runs again
                state.ignored[index] += 1
                continue
            state.failed_pods += 1
            state.failures[index] += 1
            if per_index is not None and state.failures[index] > per_index:
                state.failed_indexes.add(index)

        failure: tuple[str, str] | None = None
        if spec.active_deadline_seconds and time.monotonic() - state.started > spec.active_deadline_seconds:
            failure = ("DeadlineExceeded", "Job was active longer than specified deadline")
        elif per_index is None and state.failed_pods > (spec.backoff_limit if spec.backoff_limit is not None else 6):
            failure = ("BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif spec.max_failed_indexes is not None and len(state.failed_indexes) > spec.max_failed_indexes:
            failure = ("MaxFailedIndexesExceeded", "Job has exceeded the specified maximal number of failed indexes")
        if failure:
            for proc in state.running.values():
                self._kill(proc)
                self._pod_gone(proc)
            state.running.clear()
        else:
            parallelism = 0 if spec.suspend else spec.parallelism if spec.parallelism is not None else 1
            for index in sorted(state.running, reverse=True)[:max(0, len(state.running) - parallelism)]:
                self._delete_pod(state, index)
            pending = [i for i in range(completions)
                       if i not in state.completed and i not in state.failed_indexes and i not in state.running
                       and i not in state.terminating and (state.name, i) not in self._held]
            while pending and len(state.running) < parallelism:
                index = pending.pop(0)
                state.running[index] = self._spawn(job, index)
            self.max_running[state.name] = max(self.max_running[state.name], len(state.running))
            if not state.running and not state.terminating and \
                    len(state.completed | state.failed_indexes) >= completions and \
                    state.failed_indexes:  # held indexes are not done, so they never reach this
                failure = ("FailedIndexes", "Job has failed indexes")

        status: dict[str, Any] = {
            "startTime": state.start_time, "active": len(state.running), "ready": len(state.running),
            "terminating": len(state.terminating),
            "succeeded": len(state.completed), "failed": state.failed_pods,
            "completedIndexes": compress(state.completed), "failedIndexes": compress(state.failed_indexes)
            if per_index is not None else None,
        }
        now = _now()
        if failure:
            reason, message = failure
            status["conditions"] = [
                {"type": "FailureTarget", "status": "True", "reason": reason, "message": message,
                 "lastProbeTime": now, "lastTransitionTime": now},
                {"type": "Failed", "status": "True", "reason": reason, "message": message,
                 "lastProbeTime": now, "lastTransitionTime": now},
            ]
            state.finished = True
        elif len(state.completed) >= completions and not state.terminating:
            status["conditions"] = [
                {"type": "SuccessCriteriaMet", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": now,
                 "lastTransitionTime": now},
                {"type": "Complete", "status": "True", "reason": "CompletionsReached",
                 "message": "Reached expected number of succeeded pods", "lastProbeTime": now,
                 "lastTransitionTime": now},
            ]
            status["completionTime"] = now
            state.finished = True
        if status != state.last_status:
            self.batch.patch_namespaced_job_status(job.metadata.name, self.namespace, {"status": status})
            state.last_status = status

    def _env(self, container: Any, job: Any, index: int) -> dict[str, str]:
        """What the kubelet gives the pod's process: the image's env, then the container's, resolved."""
        pod_name = f"{job.metadata.name}-{index}"
        env = self.api.sanitize_for_serialization(container.env or [])
        if container.env_from:
            raise RuntimeError("envFrom is not supported by the pod stand-in")
        return {
            **IMAGE_ENV, "HOSTNAME": pod_name,
            **resolve_env(env, secret=secret_reader(self.api, self.namespace), fields={
                "metadata.namespace": self.namespace, "metadata.name": pod_name,
                f"metadata.annotations['{INDEX_ANNOTATION}']": str(index)}),
            "JOB_COMPLETION_INDEX": str(index),
        }

    def _spawn(self, job: Any, index: int) -> subprocess.Popen:
        container = job.spec.template.spec.containers[0]
        command = container.command or next(
            entry for prefix, entry in sorted(self.entrypoints.items(), reverse=True)
            if container.image.startswith(prefix))
        self.started[(job.metadata.name, index)] += 1
        attempt = self.started[(job.metadata.name, index)]
        log = (self.log_dir / f"{job.metadata.name}-{index}-{attempt}.log").open("wb")
        argv = pod_argv([*command, *(container.args or [])], self._env(container, job, index))
        proc = subprocess.Popen(argv, env={}, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        proc.pod_name = self._create_pod(job, index, attempt)  # type: ignore[attr-defined]
        return proc

    def _create_pod(self, job: Any, index: int, attempt: int) -> str:
        name = f"{job.metadata.name}-{index}-{attempt}"
        template_labels = job.spec.template.metadata.labels if job.spec.template.metadata else None
        labels = {**(template_labels or {}), "batch.kubernetes.io/job-name": job.metadata.name,
                  "batch.kubernetes.io/job-completion-index": str(index)}
        self.core.create_namespaced_pod(self.namespace, {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": labels, "finalizers": [POD_FINALIZER],
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job.metadata.name,
                                              "uid": job.metadata.uid, "controller": True}]},
            "spec": {"containers": [{"name": "resizer", "image": job.spec.template.spec.containers[0].image}]}})
        self.core.patch_namespaced_pod_status(name, self.namespace, {"status": {
            "phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"},
                                               {"type": "Ready", "status": "True"}]}})
        return name

    def _pod_gone(self, proc: subprocess.Popen) -> None:
        """The process has exited: its Pod object goes (its finalizer released, then deleted)."""
        name = getattr(proc, "pod_name", None)
        if name is None:
            return
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.patch_namespaced_pod(name, self.namespace, {"metadata": {"finalizers": []}})
        with contextlib.suppress(kubernetes.client.ApiException):
            self.core.delete_namespaced_pod(name, self.namespace)
