"""Live events of a job, as Server-Sent Events: `progress` (the summary, when it changes), `file` (each file as it
reaches succeeded or failed) and `end` (the terminal summary, or phase `Deleted` when the job was cancelled; the
stream then closes). A feed that cannot read sends `error` (a message) before its `end`: reconnect.

One `Feed` per watched job does the reading (the job from the watch cache, the files through FileReader) and
every watcher of that job replays the same log: a hundred watchers cost what one does. A feed stops reading a
minute after its last watcher left (so a watcher that reconnects with `Last-Event-ID` resumes exactly where it
was); one that resumes from an id this feed never gave (another replica, a restart) gets everything again, and
applies file events by their `index`, which makes a replay harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from sse_starlette import ServerSentEvent

from .files import TERMINAL, FileReader
from .watch import JobCache

log = logging.getLogger("kresize.api.events")

GetJob = Callable[[str], dict[str, Any] | None]  # blocking: the job now, None when it is gone


@dataclass
class Event:
    id: int
    kind: str  # progress | file | end
    data: dict[str, Any]

    def sse(self) -> ServerSentEvent:
        return ServerSentEvent(json.dumps(self.data, separators=(",", ":")), event=self.kind, id=str(self.id))


@dataclass
class Feed:
    name: str
    log: list[Event] = field(default_factory=list)
    files: set[int] = field(default_factory=set)  # indexes with a file event
    summary: dict[str, Any] | None = None
    ended: bool = False
    watchers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None

    async def add(self, kind: str, data: dict[str, Any]) -> None:
        async with self.changed:
            self.log.append(Event(len(self.log) + 1, kind, data))
            self.changed.notify_all()


class Feeds:
    def __init__(self, cache: JobCache, reader: FileReader, get_job: GetJob, summarize: Callable[[dict], dict],
                 poll_seconds: float = 1.0, linger_seconds: float = 60.0) -> None:
        self.cache, self.reader, self.get_job, self.summarize = cache, reader, get_job, summarize
        self.poll_seconds, self.linger_seconds = poll_seconds, linger_seconds
        self.feeds: dict[str, Feed] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def _changed(self, name: str) -> None:
        """From the watch thread: wake the feed of a job that changed, if anyone watches it."""
        feed = self.feeds.get(name)
        if feed is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(feed.wake.set)

    async def stream(self, name: str, last_event_id: str | None) -> AsyncIterator[ServerSentEvent]:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self.cache.listen(self._changed)  # for the app's life: the watch wakes the feed of a changed job
        feed = self.feeds.get(name)
        if feed is None or ((feed.task is None or feed.task.done()) and not feed.ended):
            feed = self.feeds[name] = Feed(name)
            feed.task = asyncio.create_task(self._run(feed), name=f"feed {name}")
        feed.watchers += 1
        try:
            async for event in self._replay(feed, _resume_after(last_event_id, feed)):
                yield event
        finally:
            feed.watchers -= 1

    async def _replay(self, feed: Feed, after: int) -> AsyncIterator[ServerSentEvent]:
        sent = after
        if after == 0:  # a new watcher: what happened so far, without the summaries a later one replaced
            async with feed.changed:
                await feed.changed.wait_for(lambda: bool(feed.log))
                snapshot = list(feed.log)
            latest = max(e.id for e in snapshot if e.kind != "file") if any(
                e.kind != "file" for e in snapshot) else 0
            for event in snapshot:
                if event.kind == "file" or event.id == latest or event.kind in ("end", "error"):
                    yield event.sse()
                    if event.kind == "end":
                        return
            sent = len(snapshot)
        while True:
            async with feed.changed:
                await feed.changed.wait_for(lambda sent=sent: len(feed.log) > sent)  # type: ignore[misc]
                pending = feed.log[sent:]
            for event in pending:
                yield event.sse()
                sent = event.id
                if event.kind == "end":
                    return

    async def _run(self, feed: Feed) -> None:
        """Read the job and its files while someone watches; log what changed; end with the terminal phase."""
        idle_since: float | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                job = await asyncio.to_thread(self.get_job, feed.name)
                if job is None or job["metadata"].get("deletionTimestamp"):  # cancelled: its files are going
                    await feed.add("end", {**(feed.summary or {"name": feed.name}), "phase": "Deleted"})
                    break
                summary = self.summarize(job)
                terminal = summary["phase"] in TERMINAL
                for item in await asyncio.to_thread(self.reader.finished, job, feed.files):
                    feed.files.add(item["index"])
                    await feed.add("file", item)
                if summary != feed.summary:
                    feed.summary = summary
                    await feed.add("progress", summary)
                if terminal:
                    await feed.add("end", summary)
                    break
                if feed.watchers == 0:
                    idle_since = idle_since or loop.time()
                    if loop.time() - idle_since > self.linger_seconds:
                        if self.feeds.get(feed.name) is feed:
                            self.feeds.pop(feed.name)
                        return
                else:
                    idle_since = None
                feed.wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(feed.wake.wait(), self.poll_seconds)
        except Exception as error:  # noqa: BLE001 (any failure ends the feed, told to its watchers, who reconnect)
            log.warning("events of %s stopped: %s: %s", feed.name, type(error).__name__, error)
            await feed.add("error", {"message": f"reading the job failed ({type(error).__name__}); reconnect"})
            await feed.add("end", feed.summary or {"name": feed.name})
            self.feeds.pop(feed.name, None)  # a new watcher starts a new feed
            return
        feed.ended = True
        self._forget_later(feed)

    def _forget_later(self, feed: Feed) -> None:
        """A finished feed serves late watchers from memory for a while, then goes."""
        loop = asyncio.get_running_loop()
        loop.call_later(self.linger_seconds, lambda: self.feeds.get(feed.name) is feed and self.feeds.pop(feed.name))


def _resume_after(last_event_id: str | None, feed: Feed) -> int:
    """The event to resume after: an id this feed gave, else 0 (everything again)."""
    if last_event_id and last_event_id.isdigit() and 0 < int(last_event_id) <= len(feed.log):
        return int(last_event_id)
    return 0
