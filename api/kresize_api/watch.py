"""The namespace's ResizeJobs, kept current by one list and watch: status reads, job lists and every live-event
watcher are answered from memory, so a thousand clients polling or watching cost the apiserver one watch.

Blocking (a thread of its own). A miss is not an answer: a job created a moment ago may not have arrived yet, so
callers fall back to a GET for a name the cache does not hold (see app.owned_job).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import kubernetes
from kresize_common.spec import GROUP, PLURAL, VERSION

log = logging.getLogger("kresize.api.watch")

Listener = Callable[[str], None]  # called (from the watch thread) with the name of a job that changed


class JobCache:
    def __init__(self, api: kubernetes.client.ApiClient, namespace: str, timeout: float,
                 watch_seconds: int = 300) -> None:
        self.custom = kubernetes.client.CustomObjectsApi(api)
        self.namespace, self.timeout, self.watch_seconds = namespace, timeout, watch_seconds
        self._jobs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._synced = threading.Event()
        self._stopped = threading.Event()
        self._listeners: list[Listener] = []
        self._watch: kubernetes.watch.Watch | None = None
        self._thread = threading.Thread(target=self._run, name="resizejob-watch", daemon=True)

    # -- reading -------------------------------------------------------------------------------------
    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    def get(self, name: str) -> dict[str, Any] | None:
        """The job as last seen, or None (not held, or the cache is not in sync)."""
        if not self.synced:
            return None
        with self._lock:
            return self._jobs.get(name)

    def items(self) -> list[dict[str, Any]] | None:
        """Every job, or None while the cache is not in sync (the caller lists from the apiserver)."""
        if not self.synced:
            return None
        with self._lock:
            return list(self._jobs.values())

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call `listener(name)` on every change; returns the function that stops it."""
        with self._lock:
            self._listeners.append(listener)

        def stop() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return stop

    def remember(self, job: dict[str, Any]) -> None:
        """A job this process just read or wrote: held until the watch brings a newer version."""
        with self._lock:
            name = job["metadata"]["name"]
            held = self._jobs.get(name)
            if held is None or _version(held) <= _version(job):
                self._jobs[name] = job

    # -- the watch -----------------------------------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._watch is not None:
            self._watch.stop()

    def _notify(self, names: list[str]) -> None:
        with self._lock:
            listeners = list(self._listeners)
        for name in names:
            for listener in listeners:
                try:
                    listener(name)
                except Exception:  # a listener's bug must not stop the watch
                    log.exception("job listener failed")

    def _run(self) -> None:
        backoff = 1.0
        while not self._stopped.is_set():
            try:
                self._list_and_watch()
                backoff = 1.0
            except Exception as error:  # noqa: BLE001 (the apiserver is away: misses are GETs meanwhile; retry)
                self._synced.clear()
                log.warning("watching ResizeJobs failed (%s: %s); retrying in %.0f s", type(error).__name__,
                            error, backoff)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, 30.0)

    def _list_and_watch(self) -> None:
        listing = cast(dict[str, Any], self.custom.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, _request_timeout=self.timeout))
        jobs = {j["metadata"]["name"]: j for j in listing.get("items", [])}
        with self._lock:
            changed = [n for n in set(jobs) | set(self._jobs) if jobs.get(n) != self._jobs.get(n)]
            self._jobs = jobs
        self._synced.set()
        self._notify(changed)
        self._watch = kubernetes.watch.Watch()
        for event in self._watch.stream(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL,
                resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=self.watch_seconds,
                _request_timeout=self.watch_seconds + self.timeout):
            kind, job = event["type"], event["object"]
            if kind == "ERROR":  # usually 410 Gone: the version is too old; list again
                raise RuntimeError(f"watch error: {job}")
            if kind == "BOOKMARK" or not isinstance(job, dict):
                continue
            name = job["metadata"]["name"]
            with self._lock:
                if kind == "DELETED":
                    self._jobs.pop(name, None)
                else:
                    self._jobs[name] = job
            self._notify([name])
            if self._stopped.is_set():
                return
        time.sleep(0.01)  # the watch timed out (as asked): list and watch again


def _version(job: dict[str, Any]) -> int:
    try:
        return int(job["metadata"].get("resourceVersion") or 0)
    except ValueError:  # resource versions are opaque; when not numbers, trust the newest arrival
        return 0
