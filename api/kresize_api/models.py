"""What the API answers, as response models: the OpenAPI document and every client read the same shapes.
The errors' shape is in errors.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from .errors import FileVerdict

Phase = Literal["Pending", "Queued", "Running", "Suspended", "Succeeded", "PartiallyFailed", "Failed"]
FileStateName = Literal["waiting", "active", "succeeded", "failed"]


class Health(BaseModel):
    status: str


class Me(BaseModel):
    tenant: str
    admin: bool


class Progress(BaseModel):
    total: int = Field(description="Images in the job, files refused at upload included")
    succeeded: int
    failed: int = Field(description="Images that failed, files refused at upload included")
    reused: int = Field(0, description="Succeeded images whose variants were copied from an earlier job")
    done: int = Field(description="Images finished so far, succeeded or failed")


class JobSummary(BaseModel):
    name: str
    phase: Phase
    progress: Progress
    imagesPerSecond: float | None = None
    estimatedCompletionTime: str | None = None
    queuePosition: int | None = None
    targets: list[str] = []
    createdAt: str | None = None
    completionTime: str | None = None


class JobList(BaseModel):
    items: list[JobSummary]


class Failure(BaseModel):
    source: str
    reason: str


class JobDetail(JobSummary):
    conditions: list[dict[str, Any]] = []
    failures: list[Failure] = Field([], description="The first failures (the files endpoint has them all)")


class Output(BaseModel):
    target: str
    path: str
    width: int
    height: int
    format: str
    bytes: int
    url: str = Field(description="A presigned download link; needs no token")


class FileState(BaseModel):
    index: int
    filename: str | None = Field(None, description="The name it was uploaded under; none for kubectl jobs")
    source: str | None = Field(None, description="The original's object key")
    state: FileStateName
    error: str | None = None
    reused: bool = False
    outputs: list[Output] = []


class FilePage(BaseModel):
    items: list[FileState]
    next: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last")
    total: int


class Submitted(BaseModel):
    name: str
    statusUrl: str
    filesUrl: str
    eventsUrl: str
    files: list[FileVerdict]


class Deleting(BaseModel):
    name: str
    status: Literal["deleting"]
