"""What the CLI makes of the API's answers, without I/O: exit codes, the live state of a job, and local paths
for downloads that no server string can steer outside the chosen directory."""

from __future__ import annotations

import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, cast

from .client import TERMINAL_PHASES, FileState, JobSummary, Output, SseEvent

# Exit codes a script can rely on (the module docstring of main.py and `kresize --help` list them).
EXIT_OK = 0  # everything succeeded (or, for a job still running, nothing failed so far)
EXIT_API_ERROR = 1  # the API could not be reached or answered 4xx/5xx (bad token included)
EXIT_USAGE = 2  # bad command line (Click's own code for usage errors)
EXIT_PARTIAL = 3  # the job finished but some files failed: PartiallyFailed, or a file rejected at upload
EXIT_FAILED = 4  # the job failed entirely (phase Failed)

MIN_RATE_SECONDS = 2.0  # images per second are measured over at least this long


def exit_code_for(summary: Mapping[str, Any] | None, rejected: int = 0) -> int:
    """The exit code for a job's summary plus the files refused at upload (which never reach the job)."""
    phase = (summary or {}).get("phase")
    if phase == "Failed":
        return EXIT_FAILED
    failed = ((summary or {}).get("progress") or {}).get("failed", 0)
    if phase == "PartiallyFailed" or rejected or (phase in TERMINAL_PHASES and failed):
        return EXIT_PARTIAL
    return EXIT_OK


def printable(text: object, limit: int = 500) -> str:
    """Server text made safe to show: control and format characters (escape sequences, bidi overrides)
    become '?', and it is cut at `limit` characters. Rich keeps ESC as is, so this is done here."""
    cleaned = "".join("?" if unicodedata.category(ch) in ("Cc", "Cf") else ch for ch in str(text))
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


@dataclass
class JobTracker:
    """A job as its events describe it: the latest summary and the finished files, applied idempotently
    (a file event seen twice after a reconnect changes nothing). Also measures images per second when the
    server does not say."""

    name: str
    summary: JobSummary | None = None
    files: dict[int, FileState] = field(default_factory=dict)
    last_event_id: str | None = None
    _first: tuple[float, int] | None = None  # (monotonic time, done) of the first summary
    _rate: float | None = None

    def apply(self, event: SseEvent) -> FileState | None:
        """Apply one event; returns the file when it is one not seen before (to show it once)."""
        if event.id is not None:
            self.last_event_id = event.id
        if event.event in ("progress", "end"):
            self.update(cast(JobSummary, event.json()))
        elif event.event == "file":
            state = cast(FileState, event.json())
            new = state["index"] not in self.files
            self.files[state["index"]] = state
            return state if new else None
        return None

    def update(self, summary: JobSummary, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.summary = summary
        done = summary["progress"]["done"]
        if self._first is None:
            self._first = (now, done)
        elif now - self._first[0] >= MIN_RATE_SECONDS:  # a burst of events over milliseconds says nothing
            self._rate = (done - self._first[1]) / (now - self._first[0])

    @property
    def finished(self) -> bool:
        return self.summary is not None and self.summary["phase"] in TERMINAL_PHASES

    @property
    def images_per_second(self) -> float | None:
        reported = self.summary.get("imagesPerSecond") if self.summary else None
        return reported if reported is not None else self._rate


_EXTENSIONS = {"jpeg": "jpg"}
_UNSAFE = set('<>:"/\\|?*')


def safe_component(raw: str | None, fallback: str) -> str:
    """One path component from a server string: its last path part only (either slash), printable, no
    characters Windows refuses, no leading dots (no `.`, `..` or hidden names), at most 100 characters.
    What is left empty becomes `fallback`."""
    name = PurePosixPath((raw or "").replace("\\", "/")).name
    name = "".join("_" if ch in _UNSAFE or unicodedata.category(ch)[0] == "C" else ch for ch in name)
    name = name.strip().lstrip(".").rstrip(". ")[:100]
    return name or fallback


class UnsafePath(ValueError):
    """A download path that would leave the chosen directory (through a symlink already there, say)."""


class DownloadPlanner:
    """Where each output goes: ROOT/<image stem>/<target>.<ext>. Two images with the same stem (a.jpg and
    a.png, or one name uploaded twice) get distinct folders, compared case-insensitively as some
    filesystems do."""

    def __init__(self, root: Path):
        self.root = root.resolve()
        self._folders: dict[int, str] = {}  # file index -> its folder name
        self._taken: set[str] = set()

    def folder_for(self, file: FileState) -> str:
        index = file["index"]
        if index not in self._folders:
            name = file.get("filename") or file.get("source") or ""
            stem = safe_component(PurePosixPath(safe_component(name, "")).stem, f"file-{index}")
            candidate, n = stem, 0
            while candidate.casefold() in self._taken:
                n += 1
                candidate = f"{stem}-{index}" if n == 1 else f"{stem}-{index}-{n}"
            self._taken.add(candidate.casefold())
            self._folders[index] = candidate
        return self._folders[index]

    def path_for(self, file: FileState, output: Output) -> Path:
        """The local path of one output, checked to resolve under the root (symlinks followed)."""
        target = safe_component(output.get("target"), "output")
        fmt = safe_component(str(output.get("format") or "").lower(), "bin")
        path = self.root / self.folder_for(file) / f"{target}.{_EXTENSIONS.get(fmt, fmt)}"
        resolved = path.resolve()
        if resolved == self.root or not resolved.is_relative_to(self.root):
            raise UnsafePath(f"{path} resolves to {resolved}, outside {self.root}")
        return path
